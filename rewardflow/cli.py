"""``rewardflow`` command line (also ``python -m rewardflow``): builds the parser from the command modules in
:mod:`rewardflow.commands` and turns every expected failure into one ``rewardflow: error: ...`` line."""

from __future__ import annotations

import argparse
import os
import sys

from rewardflow import runtime
from rewardflow.commands import (
    demo,
    eval,
    eval_rewards,
    models,
    noise_opt,
    report,
    rewards,
    sample,
    score,
    toy,
    train,
)

# in the order `rewardflow --help` lists them
COMMANDS = (demo, rewards, models, score, sample, train, noise_opt, eval, eval_rewards, report, toy)
# the commands that compute with torch: --threads N, --print-threads and a start-up line of the CPU threading
COMPUTE = ("demo", "score", "sample", "train", "noise-opt", "eval", "eval-rewards", "toy")


def _setup_env() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rewardflow", description="Align diffusion and rectified-flow image and video "
                                "generators with reward models: score, train, optimize the noise, evaluate.")
    sub = p.add_subparsers(dest="command", required=True)
    for cmd in COMMANDS:
        cmd.register(sub)
    for name in COMPUTE:
        runtime.add_arguments(sub.choices[name])
    return p


def main(argv: list[str] | None = None) -> int:
    _setup_env()
    args = build_parser().parse_args(argv)
    try:
        cpu = runtime.configure(getattr(args, "threads", None))  # before any command imports torch
        if hasattr(args, "print_threads"):
            print(runtime.describe(cpu), file=sys.stderr, flush=True)
            if args.print_threads:
                runtime.print_threads()
                return 0
        return int(args.fn(args) or 0)
    except (OSError, ValueError, KeyError) as e:  # OSError: missing files, a full disk (CheckpointWriteError), ...
        print(f"rewardflow: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
