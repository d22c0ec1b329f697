"""``rewardflow`` command line (also ``python -m rewardflow``)."""

from __future__ import annotations

import argparse
import json
import os
import sys


def _setup_env() -> None:
    # Never block on the model hub when nothing is reachable; a user can still pass local paths.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _cmd_demo(a) -> int:
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    from rewardflow.config import load_config

    if a.video:  # toy text-to-video: base vs best-of-N vs ReNO on the motion/content oracle
        from rewardflow.toy.video_demo import VideoDemoConfig, run_video_demo

        cfg = load_config(VideoDemoConfig, a.config, a.overrides)
        dlog.disable_progress_bar()
        tlog.disable_progress_bar()
        run_video_demo(a.out, cfg, generator_path=a.generator, reward_path=a.reward)
        return 0
    from rewardflow.toy.demo import DemoConfig, run_demo

    cfg = load_config(DemoConfig, a.config, a.overrides)
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    run_demo(a.out, cfg, generator_path=a.generator,
             reward_paths={"toy_clip": a.reward, "toy_clip_adv": a.reward_adv})
    return 0


def _cmd_train_generator(a) -> int:
    from rewardflow.toy.train import train_generator

    train_generator(a.out, steps=a.steps, batch=a.batch, lr=a.lr, seed=a.seed, caption_noise=a.caption_noise,
                    init_from=a.init_from, warmup=a.warmup, parametrization=a.parametrization,
                    save_every=a.save_every)
    print(f"saved the toy generator pipeline to {a.out}")
    return 0


def _cmd_train_reward(a) -> int:
    from rewardflow.toy.train import train_reward

    train_reward(a.out, steps=a.steps, batch=a.batch, lr=a.lr, seed=a.seed, adv_eps=a.adv_eps,
                 swap_negatives=a.swap_negatives)
    print(f"saved the toy reward to {a.out}")
    return 0


def _cmd_train_all(a) -> int:
    """The shipped recipe, in order: generator, standard reward, adversarially trained reward."""
    from pathlib import Path

    from rewardflow.toy.train import train_generator, train_reward

    out = Path(a.out)
    train_generator(out / "generator_stage1")
    train_generator(out / "generator", steps=500, lr=5e-4, seed=1, init_from=out / "generator_stage1", warmup=20)
    train_reward(out / "reward")
    train_reward(out / "reward_adv", steps=500, seed=2, adv_eps=0.06)
    print(f"saved generator, reward and reward_adv under {out}")
    return 0


def _cmd_toy_eval(a) -> int:
    from rewardflow.eval.toy import eval_prompts, generator_accuracy
    from rewardflow.pipelines.toy import ToyGenerator

    gen = ToyGenerator.from_pretrained(a.generator, guidance_scale=a.guidance)
    out = {}
    for split in ("train", "heldout"):
        rep = generator_accuracy(gen, eval_prompts(split, a.per_category, seed=a.seed), steps=a.steps, seed=a.seed)
        out[split] = {k: rep[k] for k in ("accuracy", "partial", "per_category")}
    print(json.dumps(out, indent=1))
    return 0


def _cmd_rewards(a) -> int:
    from rewardflow.rewards.base import reward_info

    rows = reward_info()
    w = max(len(r["name"]) for r in rows)
    print(f"{'name':<{w}}  modality  differentiable  description")
    for r in rows:
        print(f"{r['name']:<{w}}  {r['modality']:<8}  {'yes' if r['differentiable'] else 'no':<14}  {r['description']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rewardflow", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="ReNO-style noise optimization in the embedded toy world (CPU, ~1-2 min)")
    d.add_argument("--out", default="demo_out", help="output directory (grid PNG + summary.json)")
    d.add_argument("--config", default=None, help="YAML config (default: built-in, as configs/toy/demo.yaml)")
    d.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. iterations=20 per_category=4")
    d.add_argument("--generator", default=None, help="toy generator directory (default: shipped assets)")
    d.add_argument("--reward", default=None, help="toy_clip directory (default: shipped assets)")
    d.add_argument("--reward-adv", default=None, help="toy_clip_adv directory (default: shipped assets)")
    d.add_argument("--video", action="store_true",
                   help="the toy text-to-video demo instead (--generator/--reward then name the toy video "
                        "generator / video reward directories)")
    d.set_defaults(fn=_cmd_demo)

    r = sub.add_parser("rewards", help="list the registered rewards")
    r.set_defaults(fn=_cmd_rewards)

    t = sub.add_parser("toy", help="toy-world tools: reproduce the shipped weights, evaluate")
    tsub = t.add_subparsers(dest="toy_command", required=True)
    tg = tsub.add_parser("train-generator", help="train the toy text-to-image flow model (stage 1: ~20 min on 2 cores)")
    tg.add_argument("--out", required=True)
    tg.add_argument("--steps", type=int, default=800)
    tg.add_argument("--batch", type=int, default=128)
    tg.add_argument("--lr", type=float, default=2e-3)
    tg.add_argument("--seed", type=int, default=0)
    tg.add_argument("--caption-noise", type=float, default=0.2, help="fraction of deliberately wrong captions")
    tg.add_argument("--init-from", default=None, help="continue from a saved toy pipeline (second stage)")
    tg.add_argument("--warmup", type=int, default=100, help="lr warm-up steps")
    tg.add_argument("--parametrization", choices=("flow", "epsilon"), default="flow",
                    help="flow (rectified flow, assets/toy/generator) or epsilon (DDPM/DDIM, assets/toy/generator_eps)")
    tg.add_argument("--save-every", type=int, default=0, help="also save the EMA weights every N steps (0 = end only)")
    tg.set_defaults(fn=_cmd_train_generator)
    tr = tsub.add_parser("train-reward", help="train the tiny CLIP reward (~8 min on 2 cores)")
    tr.add_argument("--out", required=True)
    tr.add_argument("--steps", type=int, default=700)
    tr.add_argument("--batch", type=int, default=128)
    tr.add_argument("--lr", type=float, default=2e-3)
    tr.add_argument("--seed", type=int, default=1)
    tr.add_argument("--adv-eps", type=float, default=0.0, help="FGSM adversarial training radius (0 = off)")
    tr.add_argument("--swap-negatives", type=int, default=3, help="attribute-swap negatives per two-object image")
    tr.set_defaults(fn=_cmd_train_reward)
    ta = tsub.add_parser("train-all", help="reproduce all shipped toy weights (generator, reward, reward_adv)")
    ta.add_argument("--out", required=True,
                    help="writes OUT/generator, OUT/reward, OUT/reward_adv (assets/toy replaces the shipped ones)")
    ta.set_defaults(fn=_cmd_train_all)
    te = tsub.add_parser("eval", help="oracle accuracy of a toy generator on train / held-out prompts")
    te.add_argument("--generator", default=None)
    te.add_argument("--per-category", type=int, default=20)
    te.add_argument("--steps", type=int, default=4)
    te.add_argument("--guidance", type=float, default=1.0)
    te.add_argument("--seed", type=int, default=0)
    te.set_defaults(fn=_cmd_toy_eval)

    # Further commands live one per module in rewardflow/commands/, each with ``register(subparsers)``.
    import importlib
    import pkgutil

    import rewardflow.commands as cmds

    for m in sorted(pkgutil.iter_modules(cmds.__path__), key=lambda m: m.name):
        if not m.name.startswith("_"):
            importlib.import_module(f"rewardflow.commands.{m.name}").register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    _setup_env()
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except (OSError, ValueError, KeyError) as e:  # OSError: missing files, a full disk (CheckpointWriteError), ...
        print(f"rewardflow: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
