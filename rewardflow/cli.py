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
from rewardflow.io.progress import close_bars, set_quiet

# in the order `rewardflow --help` lists them
COMMANDS = (demo, rewards, models, score, sample, train, noise_opt, eval, eval_rewards, report, toy)
# the commands that compute with torch: --threads N, --print-threads and a start-up line of the CPU threading
COMPUTE = ("demo", "score", "sample", "train", "noise-opt", "eval", "eval-rewards", "toy")


def _setup_env() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class _Parser(argparse.ArgumentParser):
    """An argument error is one ``rewardflow: error: ...`` line (naming the flag, e.g. ``argument --steps:
    expected an integer >= 1, got '0'``) and exit status 2, like every other bad input."""

    def error(self, message):
        self.exit(2, f"rewardflow: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="rewardflow", description="Align diffusion and rectified-flow image and video "
                "generators with reward models: score, train, optimize the noise, evaluate.")
    sub = p.add_subparsers(dest="command", required=True)
    for cmd in COMMANDS:
        cmd.register(sub)
    for name in COMPUTE:
        runtime.add_arguments(sub.choices[name])
    return p


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done; 1 the work ran but every item failed (e.g. every judge query of `score`); 2 bad input
    or an expected failure (the one-line message names the fix); 130 interrupted (Ctrl-C)."""
    _setup_env()
    args = build_parser().parse_args(argv)
    try:
        if hasattr(args, "prepare"):  # a command's own late parsing (train: flags among the key=value overrides)
            args.prepare(args)
        if getattr(args, "quiet", False):
            set_quiet(True)
        cpu = runtime.configure(getattr(args, "threads", None))  # before any command imports torch
        if getattr(args, "print_threads", False):
            print(runtime.describe(cpu), file=sys.stderr, flush=True)
            runtime.print_threads()
            return 0
        # the start-up line of a compute command says what was chosen; nothing under --quiet, and nothing when
        # called from a Python process that had loaded torch already and chose nothing here (see runtime.configure)
        quiet = getattr(args, "quiet", False)
        if hasattr(args, "print_threads") and not quiet and cpu.get("wait_from") != runtime.TORCH_LOADED:
            print(runtime.describe(cpu), file=sys.stderr, flush=True)
        return int(args.fn(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C: no traceback from wherever the interrupt landed (diffusers, torch, ...)
        close_bars()
        print("\nrewardflow: interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError, KeyError, ImportError) as e:  # OSError: missing files, a full disk, ...
        msg = e.args[0] if isinstance(e, KeyError) and len(e.args) == 1 else str(e)
        print(f"rewardflow: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
