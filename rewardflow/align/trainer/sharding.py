"""Sharded training (the ``strategy`` key): ddp, fsdp (torch FSDP2), zero2 and zero3 (DeepSpeed ZeRO), one code path
whatever the launcher (docs/usage/distributed.md#sharding). This module holds what they share (the strategy from the
config or the launcher, the refusals, the lockstep step, the staging of checkpoint shards, the memory report) and
``ddp``; :mod:`~rewardflow.align.trainer.fsdp` and :mod:`~rewardflow.align.trainer.zero` hold the other two.

=========  ==========================================================  =========================================
strategy   what each process holds                                     how
=========  ==========================================================  =========================================
ddp        the whole denoiser, its gradients and optimizer state       the trainer averages gradients itself
fsdp       1/N of the parameters, gradients and optimizer state        ``fully_shard`` per block, then the root
zero2      the whole denoiser; 1/N of gradients and optimizer state    ``deepspeed.initialize`` (ZeRO stage 2)
zero3      1/N of the parameters, gradients and optimizer state        ``deepspeed.initialize`` (ZeRO stage 3)
=========  ==========================================================  =========================================

The methods keep calling ``gen.denoiser`` (the generator's own module): FSDP2 shards it in place, and under DeepSpeed
the trainer keeps calling the module the engine wraps (the engine's forward bookkeeping is attached to it as hooks).
So LoRA adapters can still be switched off for the reference inside a step, and the frozen reference copy of full
fine-tuning is sharded the same way (fsdp, zero3).

Lockstep: with sharded parameters or gradients every forward / backward of the denoiser is a collective, so every
process must run the same calls. The trainer pads a process that collected fewer micro-batches by replaying its last
one with weight 0, skips a step on every process when one process collected none, and back-propagates a non-finite
loss too (times NaN, so that every process skips the step). Method configurations whose number of denoiser calls is
drawn per process are refused at start (:meth:`rewardflow.align.method.Method.sharding_conflict`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import socket
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from rewardflow.align.trainer.checkpoint import CheckpointWriteError
from rewardflow.align.trainer.config import TrainConfig
from rewardflow.align.trainer.distributed import allreduce_mean

# what each strategy shards over the processes (printed at start)
SHARDED_WHAT = {"ddp": "nothing sharded (each process holds the whole model)",
                "fsdp": "parameters, gradients and optimizer state sharded over processes (torch FSDP2, per block)",
                "zero2": "gradients and optimizer state sharded over processes (DeepSpeed ZeRO-2)",
                "zero3": "parameters, gradients and optimizer state sharded over processes (DeepSpeed ZeRO-3)"}
_TRUE = ("1", "true", "yes")


# ------------------------------------------------------------------------------------------------ which strategy
def launcher_strategy(env=None) -> tuple[str | None, dict]:
    """The strategy an accelerate config selects (``accelerate launch`` exports it as environment variables):
    ``(name or None, options)``; options may hold ``cpu_offload``, ``deepspeed_config`` and ``block_classes``."""
    env = os.environ if env is None else env
    if str(env.get("ACCELERATE_USE_FSDP", "")).lower() in _TRUE:
        opts: dict = {"cpu_offload": str(env.get("FSDP_OFFLOAD_PARAMS", "")).lower() in _TRUE}
        blocks = [b.strip() for b in str(env.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "")).split(",") if b.strip()]
        if blocks:
            opts["block_classes"] = tuple(blocks)
        return "fsdp", opts
    if str(env.get("ACCELERATE_USE_DEEPSPEED", "")).lower() in _TRUE:
        stage = str(env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", ""))
        cfg_file = env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
        if cfg_file and not stage:
            stage = str(json.loads(Path(cfg_file).read_text()).get("zero_optimization", {}).get("stage", ""))
        if stage not in ("2", "3"):
            raise ValueError(f"the accelerate config selects DeepSpeed ZeRO stage {stage or '(unset)'}; rewardflow "
                             "trains with ZeRO stage 2 or 3 (zero_stage: 2 or 3), or use strategy=fsdp / ddp")
        offload = any(str(env.get(f"ACCELERATE_DEEPSPEED_OFFLOAD_{k}_DEVICE", "none")).lower() not in ("none", "")
                      for k in ("PARAM", "OPTIMIZER"))
        opts = {"cpu_offload": offload, **({"deepspeed_config": cfg_file} if cfg_file else {})}
        return f"zero{stage}", opts
    return None, {}


def resolve_strategy(c: TrainConfig, env=None) -> tuple[TrainConfig, tuple[str, ...] | None]:
    """``c`` with the launcher's strategy applied (an accelerate config selecting FSDP / DeepSpeed maps onto the same
    keys; ``strategy=ddp``, the default, follows it) and the block classes the launcher names, if any."""
    name, opts = launcher_strategy(env)
    if name is None:
        return c, None
    if c.strategy not in ("ddp", name):
        raise ValueError(f"the accelerate config selects strategy {name} but the run config says strategy="
                         f"{c.strategy}; drop one of them (launch with torchrun, or remove strategy)")
    c = dataclasses.replace(c, strategy=name, cpu_offload=c.cpu_offload or opts.get("cpu_offload", False),
                            deepspeed_config=c.deepspeed_config or opts.get("deepspeed_config"))
    return c, opts.get("block_classes")


def check_method(strategy: str, method_cls, method_config) -> None:
    """Refuse, before any model loads, the combinations a sharded strategy cannot run (docs/usage/distributed.md)."""
    if strategy == "ddp":
        return
    if not method_cls.trains_generator:
        raise ValueError(f"method {method_cls.name!r} trains its own module, not the generator: run it with "
                         f"strategy=ddp (strategy={strategy} shards the generator's denoiser)")
    problem = method_cls.sharding_conflict(method_config, strategy)
    if problem:
        raise ValueError(f"method {method_cls.name!r} cannot run with strategy={strategy}: {problem}")


def _local_numel(p: torch.Tensor) -> int:
    if isinstance(p, DTensor):
        return p.to_local().numel()
    if hasattr(p, "ds_tensor"):  # a ZeRO-3 parameter: this process's partition
        return p.ds_tensor.numel()
    return p.numel()


def _global_numel(p: torch.Tensor) -> int:
    return int(getattr(p, "ds_numel", p.numel()))


def _tensor_bytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        t = obj.to_local() if isinstance(obj, DTensor) else obj
        return t.numel() * t.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


# ------------------------------------------------------------------------------------------------ strategies
class DataParallel:
    """``strategy=ddp``: every process holds the whole model; gradients are averaged by the trainer (flattened
    buckets), the denoiser is never wrapped."""

    name = "ddp"
    shards_params = False  # a forward pass needs every process (fsdp, zero3): evaluation runs on all of them
    lockstep = False       # every backward is a collective (fsdp, zero2, zero3)

    def __init__(self, config: TrainConfig, acc, block_classes: tuple[str, ...] | None = None):
        self.config, self.acc, self.block_classes = config, acc, block_classes
        self.modules: list[torch.nn.Module] = []
        self.backward_calls = 0

    # -- set-up
    def shard(self, gen) -> None:
        """Shard the denoiser (and the frozen reference copy of full fine-tuning) in place."""
        self.modules = [gen.denoiser] + ([gen._reference] if getattr(gen, "_reference", None) is not None else [])

    def prepare_optimizer(self, gen, optimizer):
        self.optimizer = self.acc.prepare_optimizer(optimizer)
        return self.optimizer

    @property
    def base_optimizer(self):
        return getattr(self.optimizer, "optimizer", self.optimizer)

    def eval_autocast(self):
        """Context of the evaluation's sampling: nothing, unless the denoiser itself holds bf16 weights (zero with
        mixed_precision=bf16), whose inputs the autocast casts as in training."""
        return contextlib.nullcontext()

    # -- one step
    def begin_step(self) -> None:
        self.backward_calls = 0

    def lockstep_plan(self, n_micro: int) -> tuple[int, str]:
        """(micro-batches this process replays with weight 0, reason to skip the step on every process or "")."""
        if not self.lockstep or self.acc.num_processes == 1:
            return 0, ""
        counts = self.acc.reduce(torch.tensor([n_micro, -n_micro], device=self.acc.device), reduction="max")
        hi, lo = int(counts[0]), -int(counts[1])
        if lo == 0 and hi > 0:
            return 0, f"a process collected no micro-batch (strategy={self.name} runs the denoiser in lockstep)"
        return hi - n_micro, ""

    def backward(self, loss: torch.Tensor) -> None:
        self.acc.backward(loss)
        self.backward_calls += 1

    def backward_nonfinite(self, loss: torch.Tensor) -> None:
        """A non-finite loss: skipped here; a lockstep strategy back-propagates NaN so every process skips."""
        if self.lockstep and loss.requires_grad:
            self.backward(loss * float("nan"))

    def has_grad(self, params) -> bool:
        return any(p.grad is not None for p in params)

    def step(self, params, grad_clip: float, skip: bool, has_grad: bool) -> tuple[float, bool]:
        """Average the gradients, clip, step unless ``skip`` or the gradient norm is non-finite:
        ``(gradient norm before clipping, stepped)``."""
        acc = self.acc
        if acc.num_processes > 1:
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            allreduce_mean([p.grad for p in params], acc)
        return self._clip_and_step(params, grad_clip, skip, has_grad)

    def _clip_and_step(self, params, grad_clip, skip, has_grad) -> tuple[float, bool]:
        grads = [p.grad for p in params if p.grad is not None] if has_grad else []
        gnorm = 0.0
        if grads:
            if self.acc.scaler is not None:
                self.acc.unscale_gradients()
            norm = torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None],
                                                  grad_clip if grad_clip > 0 else float("inf"))
            gnorm = float(norm.full_tensor() if isinstance(norm, DTensor) else norm)
        if skip or not grads or not math.isfinite(gnorm):
            self.optimizer.zero_grad(set_to_none=True)
            return gnorm, False
        self.optimizer.step()
        return gnorm, True

    # -- weights out of / into the run
    def full_trainable_state(self, names: list[str], params: list) -> dict[str, torch.Tensor] | None:
        """The whole trainable weights on process 0 (``{}`` elsewhere); ``None``: read them from the module."""
        return None

    def stage_checkpoint(self, ckpt_dir: Path, step: int) -> Path | None:
        """Every process writes its shard into a staging directory (``None``: nothing sharded)."""
        return None

    # -- memory
    def memory_report(self, params: list) -> dict:
        """Bytes this process holds after sharding: parameters by dtype (measured), gradients and optimizer state
        (expected from the parameter counts; the optimizer allocates its state at the first step)."""
        by_dtype: dict[str, dict[str, int]] = {}
        seen: set[int] = set()
        for m in self.modules:
            for p in m.parameters():
                if id(p) in seen:
                    continue
                seen.add(id(p))
                n = _local_numel(p)
                d = by_dtype.setdefault(str(p.dtype).replace("torch.", ""), {"count": 0, "bytes": 0})
                d["count"] += n
                d["bytes"] += n * p.element_size()
        total, world = sum(_global_numel(p) for p in params), self.acc.num_processes
        local = self._local_trainable(params, total, world)
        grad_size = self._grad_element_size(params)
        moments = 2 if self.config.optimizer in ("adamw", "adam") else 0
        rep = {"strategy": self.name, "num_processes": world, "parameters": by_dtype,
               "parameter_bytes": sum(d["bytes"] for d in by_dtype.values()),
               "trainable_parameters": total, "trainable_parameters_local": local,
               "gradient_bytes": local * grad_size if self.name != "ddp" else total * grad_size,
               "optimizer_state_bytes": moments * 4 * local, "master_weight_bytes": self._master_bytes(local)}
        rep["total_bytes"] = (rep["parameter_bytes"] + rep["gradient_bytes"] + rep["optimizer_state_bytes"]
                              + rep["master_weight_bytes"])
        return rep

    def _local_trainable(self, params, total: int, world: int) -> int:
        return sum(_local_numel(p) for p in params)

    def _grad_element_size(self, params) -> int:
        return params[0].element_size() if params else 4

    def _master_bytes(self, local: int) -> int:
        return 0

    def measured_optimizer_bytes(self) -> int:
        return _tensor_bytes(list(self.base_optimizer.state.values()))


class ShardedStrategy(DataParallel):
    """What fsdp and zero2 / zero3 share: the lockstep, and sharded checkpoints written by every process."""

    lockstep = True

    def save_sharded(self, directory: Path) -> None:
        raise NotImplementedError

    def stage_checkpoint(self, ckpt_dir: Path, step: int) -> Path | None:
        staged = ckpt_dir / f".shards_step_{step:07d}"
        if self.acc.is_main_process:
            for stale in ckpt_dir.glob(".shards_step_*"):
                shutil.rmtree(stale, ignore_errors=True)
        self.acc.wait_for_everyone()
        err = None
        try:
            self.save_sharded(staged)
        except Exception as e:  # noqa: BLE001 - every process learns the first failure below, then all raise
            err = (getattr(e, "errno", None), f"{type(e).__name__}: {getattr(e, 'strerror', None) or e}")
        errors: list = [err]
        if self.acc.num_processes > 1:
            errors = [None] * self.acc.num_processes
            dist.all_gather_object(errors, err)
        bad = next(((r, e) for r, e in enumerate(errors) if e is not None), None)
        if bad is not None:
            if self.acc.is_main_process:
                shutil.rmtree(staged, ignore_errors=True)
            kept = sorted(p.name for p in ckpt_dir.glob("step_*"))
            raise CheckpointWriteError(bad[1][0], f"could not write the sharded checkpoint of step {step} in "
                                       f"{staged}: process {bad[0]}: {bad[1][1]}. The earlier checkpoints are intact "
                                       f"({', '.join(kept) if kept else 'none yet'}); free disk space and rerun with "
                                       "resume=auto")
        return staged


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 or n == 0 else f"{n / 2**10:.1f} KiB"


def describe_memory(rep: dict) -> str:
    """The memory report as the line printed at start."""
    dtypes = ", ".join(f"{k} {_mib(v['bytes'])}" for k, v in rep["parameters"].items())
    master = f", fp32 master weights {_mib(rep['master_weight_bytes'])}" if rep["master_weight_bytes"] else ""
    return (f"[rewardflow] memory per process (strategy={rep['strategy']}, {rep['num_processes']} processes): "
            f"parameters {_mib(rep['parameter_bytes'])} ({dtypes}); trainable {rep['trainable_parameters']:,} "
            f"({rep['trainable_parameters_local']:,} here); gradients {_mib(rep['gradient_bytes'])}, optimizer state "
            f"{_mib(rep['optimizer_state_bytes'])}{master}; total {_mib(rep['total_bytes'])} (gradients and "
            "optimizer state expected from the parameter counts)")


def ensure_process_group(acc) -> None:
    """One process without a launcher: FSDP2 and DeepSpeed still need a (single-member) process group."""
    if dist.is_initialized():
        return
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    for k, v in (("MASTER_ADDR", "127.0.0.1"), ("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        os.environ.setdefault(k, v)
    dist.init_process_group("nccl" if acc.device.type == "cuda" else "gloo")
