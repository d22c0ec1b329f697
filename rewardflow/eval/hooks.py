"""Evaluation hooks: extra metrics computed on the evaluation samples of a run (``eval.jsonl``).

A hook is ``fn(media, prompts) -> {metric: float}`` for media in [0, 1] (images ``[B, 3, H, W]``, videos
``[B, T, 3, H, W]``). Plugins register hooks with :func:`register_eval_hook` (the toy world registers
``toy_oracle``, its exact pixel oracle); a prompt source names the hooks that apply to its prompts and the trainer
key ``eval_hooks`` adds more.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from rewardflow.plugins import load_plugins

EvalHook = Callable[[torch.Tensor, list[str]], dict[str, float]]
_HOOKS: dict[str, EvalHook] = {}


def register_eval_hook(name: str):
    """Decorator registering an evaluation hook under ``name``."""

    def deco(fn: EvalHook) -> EvalHook:
        if name in _HOOKS:
            raise ValueError(f"evaluation hook {name!r} is already registered")
        _HOOKS[name] = fn
        return fn

    return deco


def list_eval_hooks() -> list[str]:
    load_plugins()
    return sorted(_HOOKS)


def check_eval_hooks(names: Sequence[str]) -> None:
    """Raise ``KeyError`` naming the known hooks when a name is not registered (before any model loads)."""
    load_plugins()
    unknown = [n for n in names if n not in _HOOKS]
    if unknown:
        raise KeyError(f"unknown evaluation hook {unknown[0]!r}; known hooks: {', '.join(sorted(_HOOKS)) or 'none'}")


def run_eval_hooks(names: Sequence[str], media: torch.Tensor, prompts: Sequence[str]) -> dict[str, float]:
    """The merged metrics of the hooks ``names`` (in order) on ``media``."""
    check_eval_hooks(names)
    out: dict[str, float] = {}
    for n in names:
        out.update(_HOOKS[n](media, list(prompts)))
    return out
