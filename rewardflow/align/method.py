"""The contract between the shared trainer (:mod:`rewardflow.align.trainer`) and a training method.

A method file (``rewardflow/align/methods/<method>.py``) holds three things and nothing else:

1. its config dataclass (method hyper-parameters only, each with its help text; trainer keys such as
   ``max_steps``, ``lr``, ``output_dir`` belong to :class:`rewardflow.align.trainer.TrainConfig`); its
   ``__post_init__`` checks the values, so a bad one fails when the config is read, before any model loads;
2. how it collects data: :meth:`Method.collect` — offline pairs from disk, on-policy samples, groups per prompt;
3. its loss: :meth:`Method.loss` on one micro-batch.

The trainer owns everything else (accelerate, LoRA, EMA, optimizer, NaN guard, checkpoints, logging, eval).
Per optimizer step the trainer calls ``collect`` ``grad_accum`` times (under ``torch.no_grad`` unless the method
says ``collect_needs_grad``) and then ``loss`` on each micro-batch they returned, accumulating gradients over all of
them (PPO-style methods return several micro-batches). Besides these two calls the trainer reads only what
:class:`Method` declares: the flags below, ``samples_per_prompt`` (to count samples), ``updates_per_rollout`` and
``collected_new_samples()`` (a method whose rollout serves several optimizer steps holds a
:class:`~rewardflow.align.common.policy.RolloutReuse` in ``reuse``), ``state_dict`` / ``load_state_dict`` and, for a
method that trains its own module, ``trainable_module`` / ``save_pretrained`` / ``evaluate``. A method never
branches on the model: it uses only the :class:`~rewardflow.pipelines.base.Generator` and
:class:`~rewardflow.rewards.base.Reward` interfaces.

Register a method with ``@register_method("flow_dpo")`` on the class.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

import rewardflow.align.methods
from rewardflow.align.common.policy import RolloutReuse
from rewardflow.plugins import load_plugins
from rewardflow.rewards.base import require_differentiable

_METHODS: dict[str, type[Method]] = {}


@dataclass
class MethodContext:
    """What a method may use. Built by the trainer (or by a test) and passed to the method's constructor."""

    generator: Any                      # rewardflow.pipelines.base.Generator (LoRA already added when configured)
    reward: Any | None                  # rewardflow.rewards.base.Reward (None for purely offline methods)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rng: torch.Generator | None = None  # per-process sampling RNG, checkpointed by the trainer
    sample_steps: int = 4               # sampling steps for on-policy rollouts
    batch_size: int = 8                 # prompts per process per collect() call
    grad_accum: int = 1                 # collect() calls per optimizer step (a RolloutReuse keeps one rollout per call)
    process_index: int = 0
    num_processes: int = 1
    # gather a tensor from all processes (identity on one process); methods use it for group statistics
    gather: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
    # log a scalar outside the loss metrics (e.g. collection statistics)
    log: Callable[[dict[str, float]], None] = lambda d: None


class Method:
    """Base class of a training method. Subclasses set ``name`` and ``config_class`` and implement
    :meth:`collect` and :meth:`loss`."""

    name: str = "method"
    config_class: type = object
    needs_reward_grad: bool = False      # True: refuse black-box rewards at construction (require_differentiable)
    collect_needs_grad: bool = False     # True: collect() runs with grad enabled (e.g. DRaFT collects nothing)
    uses_reference: bool = False         # True: the loss calls generator.reference()
    trains_generator: bool = True        # False: the method trains its own module (e.g. a reward model); the
                                         # trainer then neither adds LoRA nor unfreezes the generator
    samples_per_prompt: int = 1          # samples one collect() draws per prompt (the trainer counts samples with it)
    # a RolloutReuse (rewardflow.align.common.policy) when each rollout serves several optimizer steps (DDPO's inner
    # epochs, PRDP's proximal steps); None: every step collects afresh
    reuse: RolloutReuse | None = None

    @property
    def updates_per_rollout(self) -> int:
        """Optimizer steps one rollout serves."""
        return self.reuse.updates if self.reuse is not None else 1

    def collected_new_samples(self) -> bool:
        """Whether the last :meth:`collect` drew new samples (False when it re-served a cached rollout)."""
        return self.reuse is None or self.reuse.fresh

    @classmethod
    def sharding_conflict(cls, config, strategy: str) -> str | None:
        """Why this method with ``config`` cannot train under a sharded ``strategy`` (fsdp, zero2, zero3), or None.
        Sharded strategies run the denoiser in lockstep (every forward / backward is a collective), so a method
        whose number of denoiser calls is drawn per process, or that keeps its own unsharded copy of the denoiser,
        says so here; the trainer refuses the run at start with this reason."""
        return None

    def trainable_module(self) -> torch.nn.Module | None:
        """The module whose parameters the trainer optimizes when ``trains_generator`` is False."""
        return None

    def save_pretrained(self, path) -> None:
        """Write the trained artifact of a method with ``trains_generator = False`` (called at the end)."""

    def evaluate(self, prompts: list[str]) -> dict[str, float]:
        """Held-out metrics of a method with ``trains_generator = False`` (the trainer evaluates the generator
        otherwise). Runs under ``no_grad`` with every RNG restored afterwards."""
        return {}

    def __init__(self, config, ctx: MethodContext):
        self.config = config
        self.ctx = ctx
        if self.needs_reward_grad:
            if ctx.reward is None:
                raise ValueError(f"{self.name} needs a reward")
            require_differentiable(ctx.reward, self.name)

    def collect(self, prompts: list[str], step: int) -> list[dict[str, Any]]:
        """Data for one optimizer step, as a list of micro-batches (dicts of tensors / lists)."""
        raise NotImplementedError

    def loss(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss of one micro-batch (already divided as the method wants; the trainer divides by the
        number of micro-batches for accumulation) and scalar diagnostics to log."""
        raise NotImplementedError

    # keys of state_dict() that are identical on every process (saved once, from process 0); the others are saved
    # per process (each process's rollout cache, stat tracker, ...)
    shared_state_keys: tuple[str, ...] = ()

    # method state that must survive a resume (stat trackers, reference refresh counters, ...)
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def register_method(name: str):
    def deco(cls):
        if name in _METHODS:
            raise ValueError(f"method {name!r} is already registered")
        if not dataclasses.is_dataclass(cls.config_class):
            raise TypeError(f"{cls.__name__}.config_class must be a dataclass")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return deco


def _import_builtin() -> None:
    # every module of rewardflow/align/methods/ is one training method (importing it registers it); plugins
    # register more
    for m in pkgutil.iter_modules(rewardflow.align.methods.__path__):
        importlib.import_module(f"rewardflow.align.methods.{m.name}")
    load_plugins()


def get_method(name: str) -> type[Method]:
    _import_builtin()
    if name not in _METHODS:
        close = difflib.get_close_matches(name, _METHODS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown method {name!r}.{hint} Known methods: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def list_methods() -> list[str]:
    _import_builtin()
    return sorted(_METHODS)
