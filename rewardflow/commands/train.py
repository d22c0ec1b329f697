"""``rewardflow train CONFIG [key=value ...]``: fine-tune a generator with one training method.

The YAML holds the trainer keys (:class:`rewardflow.align.trainer.TrainConfig`) and the method's keys flat; every
key can be overridden on the command line (``max_steps=20 output_dir=runs/x``). A mistyped key fails before any
model loads and lists the valid keys. See docs/usage/training.md.
"""

from __future__ import annotations

from rewardflow.io.progress import add_quiet_flag, set_quiet
import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="fine-tune a generator with a reward (flow_dpo, rwr, draft, grpo, ...)",
        description="Train with one method on the shared trainer, e.g. "
                    "`rewardflow train configs/toy/flow_dpo.yaml max_steps=50 output_dir=runs/dpo`.")
    p.add_argument("config", nargs="?", default=None, help="YAML config (trainer keys and the method's keys, flat)")
    # REMAINDER: flags may follow the overrides (`rewardflow train R --smoke output_dir=D`); _split_flags takes them
    p.add_argument("overrides", nargs=argparse.REMAINDER, metavar="key=value", help="override config keys")
    p.add_argument("--list-methods", action="store_true", help="list the registered training methods and exit")
    p.add_argument("--print-config", action="store_true",
                   help="validate the config, print the resolved keys and exit (loads no model)")
    p.add_argument("--help-config", nargs="?", const="", default=None, metavar="METHOD",
                   help="print every trainer key (type, default, help) and, with METHOD, the method's keys; exit")
    add_quiet_flag(p)
    p.add_argument("--smoke", action="store_true",
                   help="dry run on the CPU: the recipe with a tiny random model of the same family and random-weight "
                        "rewards, 2 steps with capped sizes; prints what the real run would load, checks that the "
                        "saved weights change a plain diffusers pipeline's output")
    # the command line runs this before it chooses the CPU threading, so --threads / -q after the config count too
    p.set_defaults(fn=_run, prepare=_split_flags)


FLAGS_AFTER_CONFIG = ("--smoke", "--print-config", "--list-methods", "--quiet", "--print-threads")


def _split_flags(a) -> None:
    """Flags written among the ``key=value`` overrides (after the config) set as if written before it:
    :data:`FLAGS_AFTER_CONFIG`, ``-q`` and ``--threads N`` (or ``--threads=N``)."""
    rest, toks = [], iter(a.overrides)
    for tok in toks:
        if tok in FLAGS_AFTER_CONFIG or tok == "-q":
            setattr(a, "quiet" if tok == "-q" else tok[2:].replace("-", "_"), True)
            if tok in ("--quiet", "-q"):
                set_quiet(True)
        elif tok == "--threads" or tok.startswith("--threads="):
            value = tok.partition("=")[2] if "=" in tok else next(toks, None)
            if value is None:
                raise ValueError("--threads needs a number, e.g. --threads 1")
            a.threads = value  # checked by rewardflow.runtime.configure
        elif tok.startswith("-"):
            raise ValueError(f"unknown option {tok!r} after the config; train takes key=value overrides and "
                             f"{', '.join(FLAGS_AFTER_CONFIG)}, -q, --threads N")
        else:
            rest.append(tok)
    a.overrides = rest


def _run(a) -> int:
    import dataclasses
    import json
    import os
    import sys

    from rewardflow.align.method import list_methods

    _split_flags(a)  # idempotent: done already when called through rewardflow.cli

    if a.list_methods:
        print("\n".join(list_methods()))
        return 0
    if a.help_config is not None:
        print(help_config(a.help_config or None))
        return 0
    if a.config is None:
        raise ValueError("give a config file: rewardflow train CONFIG [key=value ...] (see configs/)")
    check_recipe_command(a.config, "train")
    if a.smoke:
        from rewardflow.testing.smoke import run_train_smoke

        run_train_smoke(a.config, a.overrides)
        return 0
    from rewardflow.align.trainer import Trainer, TrainingInterrupted, load_train_config
    from rewardflow.align.trainer.distributed import end_process_group

    tcfg, mcfg = load_train_config(a.config, a.overrides)
    if a.print_config:
        print(json.dumps({**dataclasses.asdict(tcfg), **dataclasses.asdict(mcfg)}, indent=1, default=list))
        return 0
    tcfg = preflight(tcfg, mcfg)  # cheap input checks before a (possibly large) model loads
    try:
        summary = Trainer(tcfg, mcfg).train()
    except TrainingInterrupted as e:  # SIGTERM / SIGINT: the checkpoint is written; one line, no traceback
        end_process_group()
        if int(os.environ.get("RANK", "0") or 0) == 0:
            print(f"rewardflow: {e}", file=sys.stderr)
        return e.exit_code
    end_process_group()
    if int(os.environ.get("RANK", "0") or 0) != 0:  # several processes: the run's summary is printed once
        return 0
    print(json.dumps({k: v for k, v in summary.items() if k not in ("before", "after")}, indent=1))
    for when in ("before", "after"):
        ev = summary.get(when) or {}
        if ev:
            print(f"{when}: " + ", ".join(f"{k}={v:.4g}" for k, v in ev.items()
                                          if isinstance(v, float) and k in ("eval_reward", "oracle_accuracy",
                                                                                "eval_pair_accuracy")))
    return 0


def check_recipe_command(path: str, command: str) -> None:
    """A recipe for another command (``command: noise-opt`` at its top) is refused with the command to run."""
    from rewardflow.config import read_config_dict

    other = read_config_dict(path).get("command", command)
    if other != command:
        raise ValueError(f"{path} is a `rewardflow {other}` recipe: run `rewardflow {other} --config {path}`")


def preflight(tcfg, mcfg=None):
    """Fail in seconds, not after the model loaded: the model's adapter is known, the run names its prompts (or the
    model supplies them), prompt files and the method's input files (e.g. an offline dataset) exist, reward names are
    known. Returns the config with the model's defaults applied."""
    import dataclasses
    import os

    from rewardflow.align.trainer import apply_model_defaults
    from rewardflow.align.trainer.loop import generator_options
    from rewardflow.io.prompts import load_prompt_source
    from rewardflow.pipelines.registry import resolve_adapter
    from rewardflow.rewards.base import check_reward_name
    from rewardflow.rewards.combine import parse_reward_spec

    if not tcfg.model:
        raise ValueError("the config needs `model:` (a diffusers pipeline directory, a hub id, or an embedded model "
                         "such as toy)")
    entry = resolve_adapter(tcfg.model, tcfg.adapter)
    tcfg = apply_model_defaults(tcfg, entry["cls"].run_defaults)

    if tcfg.init_lora and not os.path.exists(tcfg.init_lora):
        raise FileNotFoundError(f"init_lora: LoRA directory or file not found: {tcfg.init_lora}")
    for f in dataclasses.fields(mcfg) if mcfg is not None else ():
        value = getattr(mcfg, f.name)
        if f.metadata.get("path") and value and not os.path.exists(value):
            raise FileNotFoundError(f"{f.name}: not found: {value} (relative paths in a config file are looked up "
                                    "next to it, then under assets/, then in the working directory)")
    for key in ("prompts", "eval_prompts"):
        spec = getattr(tcfg, key)
        if not spec:
            continue
        try:
            load_prompt_source(spec)
        except ValueError as e:
            raise ValueError(f"{key}: {e}") from None
    names = set()
    for spec in ([tcfg.reward] if tcfg.reward else []) + list(tcfg.heldout_rewards):
        for name, _ in parse_reward_spec(spec):
            check_reward_name(name)
            names.add(name)
    extra = sorted(set(tcfg.reward_kwargs) - names)
    if extra:
        raise ValueError(f"reward_kwargs names {extra}, which are not rewards of this run (reward / heldout_rewards: "
                         f"{sorted(names) or 'none'})")
    generator_options(tcfg).load_kwargs(entry)  # an option the model family cannot take fails here, by name
    return tcfg


def help_config(method: str | None = None) -> str:
    """The trainer keys and (for ``method``) the method's keys: name, type, default and help of each."""
    from rewardflow.align.method import get_method
    from rewardflow.align.trainer import TrainConfig
    from rewardflow.config import describe_fields

    out = "Trainer keys (TrainConfig):\n" + describe_fields(TrainConfig)
    if method:
        cls = get_method(method)
        out += f"\n{method} keys ({cls.config_class.__name__}):\n" + describe_fields(cls.config_class)
    else:
        out += "\nMethod keys: rewardflow train --help-config METHOD (methods: rewardflow train --list-methods)"
    return out
