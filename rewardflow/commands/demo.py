"""``rewardflow demo``: the embedded toy world's demos (CPU, no downloads).

Image (default): ReNO noise optimization on held-out prompts, judged by the exact oracle
(:mod:`rewardflow.commands.demos.image`); ``--video``: base vs best-of-N vs ReNO on the toy text-to-video model
(:mod:`rewardflow.commands.demos.video`).
"""

from __future__ import annotations

from rewardflow.io.progress import add_quiet_flag


def register(subparsers) -> None:
    d = subparsers.add_parser("demo", help="ReNO-style noise optimization in the embedded toy world (CPU, ~1-2 min)")
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
    add_quiet_flag(d)
    d.set_defaults(fn=run)


def run(a) -> int:
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    from rewardflow.config import load_config

    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    if a.video:
        from rewardflow.commands.demos.video import VideoDemoConfig, run_video_demo

        run_video_demo(a.out, load_config(VideoDemoConfig, a.config, a.overrides), generator_path=a.generator,
                       reward_path=a.reward)
        return 0
    from rewardflow.commands.demos.image import DemoConfig, run_demo

    run_demo(a.out, load_config(DemoConfig, a.config, a.overrides), generator_path=a.generator,
             reward_paths={"toy_clip": a.reward, "toy_clip_adv": a.reward_adv})
    return 0
