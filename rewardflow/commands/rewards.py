"""``rewardflow rewards``: the registered rewards (name, modality, differentiable, description), the reward wrappers
(``segmental(REWARD)``) and how to combine rewards in a spec (a weighted sum)."""

from __future__ import annotations

SPEC_HELP = """\
Reward specs (--reward on score / noise-opt / eval / eval-rewards, `reward:` in a training config):
  NAME                      one reward, e.g. toy_clip
  NAME:W,NAME:W,...         a weighted sum  sum_k W_k * r_k  (W = 1 if omitted; 0 logs a component without
                            counting it, a negative W is a penalty), e.g. hpsv2.1:5,imagereward:1
  WRAPPER(NAME)[:W]         a wrapper around a registered reward, alone or in a sum, e.g. segmental(toy_clip)
Weights files: --weights NAME=PATH on the command line (path= in Python)."""


def register(subparsers) -> None:
    r = subparsers.add_parser("rewards", help="list the registered rewards, the wrappers and the spec syntax")
    r.set_defaults(fn=run)


def run(a) -> int:
    from rewardflow.rewards.base import reward_info, wrapper_info

    rows, wraps = reward_info(), wrapper_info()
    wrap_names = [f"{w['name']}(REWARD)" for w in wraps]
    w = max(len(x) for x in [r["name"] for r in rows] + wrap_names)
    print(f"{'name':<{w}}  modality  differentiable  description")
    for r in rows:
        print(f"{r['name']:<{w}}  {r['modality']:<8}  {'yes' if r['differentiable'] else 'no':<14}  {r['description']}")
    if wraps:
        print(f"\nwrappers (REWARD: a registered {'/'.join(sorted({x['takes'] for x in wraps}))} reward):")
        for x, name in zip(wraps, wrap_names):
            print(f"{name:<{w}}  {x['modality']:<8}  {'as REWARD':<14}  {x['description']}")
    print("\n" + SPEC_HELP)
    return 0
