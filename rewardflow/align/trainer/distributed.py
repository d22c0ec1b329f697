"""Several processes: the run's ``Accelerator`` (gloo on CPU, a collective timeout, launch traps turned into
messages), the per-process batch, and bucketed all-reduce / broadcast of gradients and weights.

The denoiser is deliberately not wrapped in DDP: the trainer averages gradients itself (:func:`allreduce_mean`), so
LoRA adapters can be switched off for the reference policy inside a step.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import warnings

import torch
import torch.distributed
from accelerate import Accelerator, InitProcessGroupKwargs

from rewardflow.align.trainer.config import TrainConfig


def per_process_batch_size(global_batch_size: int, num_processes: int, grad_accum: int) -> int:
    """``global_batch_size / (num_processes * grad_accum)``; an error when it does not divide evenly (the effective
    batch would silently differ from the one asked for)."""
    n = num_processes * grad_accum
    if global_batch_size % n:
        lo, hi = (global_batch_size // n) * n, (global_batch_size // n + 1) * n
        eg = f"{lo} or {hi}" if lo else str(hi)
        raise ValueError(f"global_batch_size={global_batch_size} is not divisible by num_processes x grad_accum = "
                         f"{num_processes} x {grad_accum} = {n}; use a multiple of {n} (e.g. {eg}), change "
                         "grad_accum, or set global_batch_size=0 and batch_size")
    return global_batch_size // n


def _env_int(name: str, default: int = 1) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


@contextlib.contextmanager
def plain_accelerate_env():
    """Build the ``Accelerator`` as a plain data-parallel one even under an FSDP / DeepSpeed accelerate config: the
    trainer shards the denoiser itself (accelerate's plugins would wrap a model it is never given)."""
    keys = ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED")
    saved = {k: os.environ.get(k) for k in keys}
    for k in keys:
        if k in os.environ:
            os.environ[k] = "false"
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is not None:
                os.environ[k] = v


def make_accelerator(c: TrainConfig):
    """The run's ``Accelerator``: CPU (gloo) whenever CUDA is unavailable or ``device=cpu``, a collective timeout of
    ``collective_timeout_s``, and two launch traps turned into messages:

    * a launcher started several processes (``WORLD_SIZE`` > 1) but accelerate did not join them into one process
      group: the processes would train as unsynchronized copies, so this is an error;
    * a launcher was asked for several processes but started one (``accelerate launch --cpu --num_processes N``
      starts a single process): a warning, the run continues on one process.
    """
    if c.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but CUDA is not available; use device=auto or device=cpu")
    cpu = c.device == "cpu" or (c.device == "auto" and not torch.cuda.is_available())
    world = _env_int("WORLD_SIZE")
    if world > 1 and cpu:
        # torchrun / `accelerate launch --multi_gpu` on a machine without CUDA: accelerate only builds the gloo
        # process group when it is told to use the CPU (without it, N independent single-process runs start)
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    pg = InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=float(c.collective_timeout_s)))
    with plain_accelerate_env():  # FSDP / DeepSpeed are the trainer's strategies, not accelerate's
        acc = Accelerator(mixed_precision=c.mixed_precision, cpu=cpu, kwargs_handlers=[pg])
    if world > 1 and acc.num_processes != world:
        raise RuntimeError(
            f"the launcher started {world} processes (WORLD_SIZE={world}) but accelerate set up "
            f"{acc.num_processes} (distributed_type={acc.distributed_type}): the processes would train as "
            "unsynchronized copies. On a machine without CUDA launch with `torchrun --nproc_per_node N -m "
            "rewardflow train ...` or `accelerate launch --multi_gpu --num_processes N ...` and keep device=auto "
            "(or device=cpu), so the CPU (gloo) backend is used")
    if acc.num_processes == 1 and world <= 1 and os.environ.get("MASTER_ADDR") and "RANK" not in os.environ:
        warnings.warn(
            "a launcher prepared a multi-process run (MASTER_ADDR is set) but only this one process started. "
            "`accelerate launch --cpu --num_processes N` starts ONE process; on CPU use `torchrun --nproc_per_node "
            "N -m rewardflow train ...` or `accelerate launch --multi_gpu --num_processes N -m rewardflow train "
            "...` (see docs/usage/distributed.md). Continuing with 1 process.", stacklevel=2)
        print("[rewardflow] WARNING: several processes were requested but only one started; see "
              "docs/usage/distributed.md", flush=True)
    dt = str(acc.distributed_type)
    if "FSDP" in dt or "DEEPSPEED" in dt:  # plain_accelerate_env failed to keep accelerate's plugins out
        raise RuntimeError(f"accelerate set up distributed_type={dt}; rewardflow shards the denoiser itself: select "
                           "the sharding with the strategy key (docs/usage/distributed.md#sharding)")
    return acc


def _buckets(tensors: list[torch.Tensor], bucket_numel: int):
    """Consecutive runs of same-dtype/device tensors of at most ``bucket_numel`` elements (at least one tensor)."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    for ts in groups.values():
        i = 0
        while i < len(ts):
            bucket, n = [], 0
            while i < len(ts) and (not bucket or n + ts[i].numel() <= bucket_numel):
                bucket.append(ts[i])
                n += ts[i].numel()
                i += 1
            yield bucket


@torch.no_grad()
def _unflatten_into(flat: torch.Tensor, bucket: list[torch.Tensor]) -> None:
    off = 0
    for t in bucket:
        t.copy_(flat[off:off + t.numel()].view_as(t))
        off += t.numel()


def allreduce_mean(tensors: list[torch.Tensor], acc, bucket_numel: int = 1 << 25) -> None:
    """Average ``tensors`` over processes in place, flattened into buckets of same dtype/device (one collective per
    bucket instead of one per tensor: LoRA has hundreds of small tensors)."""
    for bucket in _buckets(tensors, bucket_numel):
        flat = acc.reduce(torch.cat([t.reshape(-1) for t in bucket]), reduction="mean")
        _unflatten_into(flat, bucket)


def broadcast_from_main(tensors: list[torch.Tensor], acc, bucket_numel: int = 1 << 25) -> None:
    """Overwrite ``tensors`` in place with process 0's values (flattened buckets), so that every process starts from
    the same weights whatever it drew from its own seed."""
    for bucket in _buckets(tensors, bucket_numel):
        flat = torch.cat([t.detach().reshape(-1) for t in bucket])
        torch.distributed.broadcast(flat, src=0)
        _unflatten_into(flat, bucket)


def max_over_processes(value: int, acc) -> int:
    """The largest ``value`` over all processes (the same answer on each; e.g. a stop signal any one received)."""
    if acc.num_processes == 1:
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64, device=acc.device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t.item())


def end_process_group() -> None:
    """Leave the run's process group when training ends (every process, after its last collective): a gloo group
    still alive at interpreter exit can abort a process ("terminate called without an active exception") after the
    run itself has finished. Nothing when there is no group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
