"""``rewardflow rewards``: the registered rewards (name, modality, differentiable, description)."""

from __future__ import annotations


def register(subparsers) -> None:
    r = subparsers.add_parser("rewards", help="list the registered rewards")
    r.set_defaults(fn=run)


def run(a) -> int:
    from rewardflow.rewards.base import reward_info

    rows = reward_info()
    w = max(len(r["name"]) for r in rows)
    print(f"{'name':<{w}}  modality  differentiable  description")
    for r in rows:
        print(f"{r['name']:<{w}}  {r['modality']:<8}  {'yes' if r['differentiable'] else 'no':<14}  {r['description']}")
    return 0
