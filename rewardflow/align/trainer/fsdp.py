"""``strategy=fsdp``: torch FSDP2 sharding of the generator's denoiser (the common parts of the sharded strategies,
the lockstep step and the staging of checkpoint shards, are in :mod:`rewardflow.align.trainer.sharding`)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    MixedPrecisionPolicy,
    OffloadPolicy,
    fully_shard,
)

from rewardflow.align.trainer.sharding import ShardedStrategy, ensure_process_group


class FSDP(ShardedStrategy):
    """``strategy=fsdp``: torch FSDP2. ``fully_shard`` on every block the adapter names
    (``Generator.shard_block_classes``, or the accelerate config's ``fsdp_transformer_layer_cls_to_wrap``), then on
    the root; gradients are reduce-scattered in backward (averaged over processes); bf16 mixed precision keeps fp32
    sharded parameters and reduces in fp32; ``cpu_offload`` keeps the shards in CPU memory. Checkpoints are
    torch.distributed.checkpoint (DCP) directories, one file per process."""

    name = "fsdp"
    shards_params = True

    def shard(self, gen) -> None:
        super().shard(gen)
        ensure_process_group(self.acc)
        names = tuple(self.block_classes or getattr(gen, "shard_block_classes", ()) or ())
        if not names:
            raise ValueError(f"strategy=fsdp: {type(gen).__name__} names no block classes to shard "
                             "(Generator.shard_block_classes); set them on the adapter, or name them with "
                             "fsdp_transformer_layer_cls_to_wrap in an accelerate config")
        c = self.config
        mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if c.mixed_precision == "bf16" else MixedPrecisionPolicy())
        offload = CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if c.cpu_offload else OffloadPolicy()
        for module in self.modules:
            blocks = [m for m in module.modules() if type(m).__name__ in names and m is not module]
            if not blocks:
                found = sorted({type(m).__name__ for m in module.modules()})
                raise ValueError(f"strategy=fsdp: no block of class {', '.join(names)} in "
                                 f"{type(module).__name__} (its module classes: {', '.join(found[:30])})")
            for b in reversed(blocks):  # innermost first, should one named block hold another
                fully_shard(b, mp_policy=mp, offload_policy=offload)
            fully_shard(module, mp_policy=mp, offload_policy=offload)
        gen._compute_device = self.acc.device  # offloaded shards live on the CPU; inputs belong on the device

    def prepare_optimizer(self, gen, optimizer):
        self.optimizer = optimizer
        return optimizer

    def step(self, params, grad_clip, skip, has_grad):
        return self._clip_and_step(params, grad_clip, skip, has_grad)  # reduce-scattered in backward

    def _state(self) -> dict:
        root = self.modules[0]
        return {"model": get_model_state_dict(root, options=StateDictOptions(ignore_frozen_params=True)),
                "optim": get_optimizer_state_dict(root, self.optimizer)}

    def save_sharded(self, directory: Path) -> None:
        dcp.save(self._state(), checkpoint_id=str(directory))

    def load_sharded(self, directory: Path, meta: dict) -> None:
        root, state = self.modules[0], self._state()
        dcp.load(state, checkpoint_id=str(directory))
        set_model_state_dict(root, state["model"], options=StateDictOptions(ignore_frozen_params=True, strict=False))
        set_optimizer_state_dict(root, self.optimizer, state["optim"])

    def full_trainable_state(self, names, params):
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
        full = get_model_state_dict(self.modules[0], options=opts)
        keep = set(names)
        return {k: v.contiguous() for k, v in full.items() if k in keep} if self.acc.is_main_process else {}
