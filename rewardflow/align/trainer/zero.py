"""``strategy=zero2`` / ``zero3``: DeepSpeed ZeRO through ``deepspeed.initialize``, the config written from the trainer
keys, and the few DeepSpeed hooks the trainer needs (the common parts of the sharded strategies are in
:mod:`rewardflow.align.trainer.sharding`). DeepSpeed is an optional dependency (the ``deepspeed`` extra), imported
only when a ZeRO strategy is used."""

from __future__ import annotations

import contextlib
import importlib
import json
import math
from pathlib import Path

import torch

from rewardflow.align.trainer.config import TrainConfig
from rewardflow.align.trainer.sharding import ShardedStrategy, ensure_process_group


class ZeRO(ShardedStrategy):
    """``strategy=zero2`` / ``zero3``: DeepSpeed ZeRO through ``deepspeed.initialize`` with a config written from
    the trainer keys (:func:`deepspeed_config`). The trainer owns accumulation (``managed_gradient_accumulation:
    false``: any number of backward calls, then one ``engine.step()``), DeepSpeed clips to ``grad_clip`` and skips a
    step whose gradients are not finite. Checkpoints are DeepSpeed's own files (read back with
    ``torch.load(weights_only=True)``)."""

    def __init__(self, config, acc, block_classes=None):
        super().__init__(config, acc, block_classes)
        self.name = config.strategy
        self.stage = int(config.strategy[-1])
        self.shards_params = self.stage == 3
        self.engine = self.ref_engine = None

    def prepare_optimizer(self, gen, optimizer):
        import deepspeed  # lazy: an optional dependency (the `deepspeed` extra), needed only for zero2 / zero3

        needed = ("managed_gradient_accumulation", "_backward_prologue", "_backward_prologue_per_tensor")
        if not all(hasattr(deepspeed.DeepSpeedEngine, a) for a in needed):
            raise ValueError(f"strategy={self.name} needs DeepSpeed >= 0.19.8 (the trainer accumulates gradients "
                             f"itself: managed_gradient_accumulation=false); found {deepspeed.__version__}. "
                             "pip install --no-build-isolation 'deepspeed>=0.19.8'")
        ensure_process_group(self.acc)
        if self.acc.device.type == "cpu":
            # DeepSpeed's CPU accelerator compiles a shared-memory all-reduce op (C++, minutes on first use) when its
            # communication backend starts; only DeepSpeed inference (inference_all_reduce) uses it, training
            # collectives go through torch.distributed (gloo), so it is not built. (importlib: the package
            # `deepspeed.comm` re-exports the torch library under the same name as its submodule `torch`.)
            importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
        n = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
        cfg = deepspeed_config(self.config, n)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=gen.denoiser, optimizer=optimizer, config=cfg)
        _route_through_engine(gen.denoiser, self.engine)
        if self.stage == 3 and len(self.modules) > 1:  # the frozen reference copy of full fine-tuning: sharded too
            ref_cfg = {k: v for k, v in cfg.items() if k not in ("gradient_clipping",)}
            self.ref_engine, *_ = deepspeed.initialize(model=self.modules[1], config=ref_cfg)
        gen._compute_device = self.acc.device
        return self.optimizer

    def eval_autocast(self):
        return self.acc.autocast() if self.config.mixed_precision == "bf16" else contextlib.nullcontext()

    def backward(self, loss):
        self.engine.backward(loss, scale_wrt_gas=False)
        self.backward_calls += 1

    def has_grad(self, params) -> bool:
        return self.backward_calls > 0

    def step(self, params, grad_clip, skip, has_grad):
        if not has_grad:  # no process back-propagated anything: nothing accumulated
            return 0.0, False
        self.engine.step()  # clips to gradient_clipping; skips (and clears) a step with non-finite gradients
        norm = self.engine.get_global_grad_norm()
        gnorm = float(norm) if norm is not None else 0.0
        stepped = bool(self.engine.was_step_applied())
        if skip and stepped:  # a non-finite loss was back-propagated as NaN: DeepSpeed must have skipped
            raise RuntimeError("DeepSpeed applied an optimizer step the trainer had to skip (non-finite loss)")
        return gnorm, stepped

    def save_sharded(self, directory: Path) -> None:
        self.engine.save_checkpoint(str(directory), tag="zero", client_state={}, save_latest=False,
                                    exclude_frozen_parameters=True)

    def load_sharded(self, directory: Path, meta: dict) -> None:
        saved = int(meta.get("num_processes", self.acc.num_processes))
        if saved != self.acc.num_processes:
            raise ValueError(f"{directory} holds DeepSpeed ZeRO shards of {saved} processes; resume it with "
                             f"{saved} processes (this run has {self.acc.num_processes})")
        with _weights_only_checkpoint_engine(self.engine):
            path, _ = self.engine.load_checkpoint(str(directory), tag="zero", load_module_strict=False,
                                                  load_optimizer_states=True, load_lr_scheduler_states=False)
        if path is None:
            raise ValueError(f"{directory}: no DeepSpeed checkpoint (tag 'zero') found")

    def full_trainable_state(self, names, params):
        from deepspeed.utils import (
            safe_get_full_fp32_param,  # lazy: optional dependency (see prepare_optimizer)
        )

        out = {}
        for n, p in zip(names, params):  # one parameter at a time: a collective on every process
            full = safe_get_full_fp32_param(p)
            if self.acc.is_main_process:
                out[n] = full.detach().cpu().contiguous().clone()
        return out

    def _local_trainable(self, params, total, world):
        return math.ceil(total / world)  # ZeRO partitions the flattened trainable parameters evenly

    def _grad_element_size(self, params):
        return 2 if self.config.mixed_precision == "bf16" else 4

    def _master_bytes(self, local):
        return 4 * local  # the fp32 copy of this process's partition the optimizer updates



# ------------------------------------------------------------------------------------------------ DeepSpeed helpers
def deepspeed_config(c: TrainConfig, n_trainable: int | None = None) -> dict:
    """The DeepSpeed config: the user's JSON (``deepspeed_config``) or nothing, plus the entries the trainer owns
    (stage, accumulation, clipping, precision, micro-batch). A conflicting user value is an error naming the key.
    Unless the JSON sets them, the communication buckets and ZeRO-3's live-parameter limits scale with the model:
    DeepSpeed's defaults (5e8-element buckets, 1e9 live parameters) where a quarter of the trainable parameters is
    larger, else that quarter, so that a small model is still sharded block by block rather than held whole."""
    stage = int(c.strategy[-1])
    base: dict = {}
    if c.deepspeed_config:
        try:
            base = json.loads(Path(c.deepspeed_config).read_text())
        except ValueError as e:
            raise ValueError(f"deepspeed_config {c.deepspeed_config}: not valid JSON ({e})") from e
    for key in ("optimizer", "scheduler"):
        if key in base:
            raise ValueError(f"deepspeed_config {c.deepspeed_config}: remove its {key!r} section; the trainer builds "
                             "the optimizer and lr schedule from its own keys (optimizer, lr, lr_scheduler, ...)")
    owned = {"train_micro_batch_size_per_gpu": c.batch_size, "gradient_accumulation_steps": 1,
             "gradient_clipping": float(c.grad_clip)}
    for key, want in owned.items():
        got = base.get(key, "auto")
        if got != "auto" and float(got) != float(want):
            raise ValueError(f"deepspeed_config {c.deepspeed_config}: {key}={got} conflicts with the trainer "
                             f"({want}, from batch_size / grad_clip; the trainer accumulates itself); remove it or "
                             "use \"auto\"")
    zo = dict(base.get("zero_optimization", {}))
    if zo.get("stage", stage) not in (stage, "auto"):
        raise ValueError(f"deepspeed_config {c.deepspeed_config}: zero_optimization.stage={zo['stage']} but "
                         f"strategy={c.strategy}")
    zo["stage"] = stage
    if n_trainable:
        quarter = max(n_trainable // 4, 2**20)
        defaults = {"reduce_bucket_size": 5e8, **({"allgather_bucket_size": 5e8} if stage == 2 else
                    {"stage3_prefetch_bucket_size": 5e7, "stage3_max_live_parameters": 1e9,
                     "stage3_max_reuse_distance": 1e9})}
        for key, ds_default in defaults.items():
            zo.setdefault(key, int(min(ds_default, quarter)))
    if c.cpu_offload:
        zo.setdefault("offload_optimizer", {"device": "cpu"})
        if stage == 3:
            zo.setdefault("offload_param", {"device": "cpu"})
    bf16 = c.mixed_precision == "bf16"
    for key, want in (("bf16", bf16), ("fp16", False)):
        got = base.get(key, {}).get("enabled", "auto")
        if got not in ("auto", want):
            raise ValueError(f"deepspeed_config {c.deepspeed_config}: {key}.enabled={got} conflicts with "
                             f"mixed_precision={c.mixed_precision}")
    cfg = {k: v for k, v in base.items() if k not in ("train_batch_size",)}
    cfg.update(owned)
    cfg.update({"managed_gradient_accumulation": False, "zero_optimization": zo,
                "bf16": {**base.get("bf16", {}), "enabled": bf16}, "fp16": {**base.get("fp16", {}), "enabled": False},
                "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False})
    cfg.setdefault("steps_per_print", 2**31 - 1)
    return cfg


def _route_through_engine(module: torch.nn.Module, engine) -> None:
    """Calling ``module`` directly does what ``engine(...)`` does around it (clear the per-forward backward state,
    register the backward prologue on the outputs), so the generator keeps calling its own denoiser."""
    from deepspeed.runtime.utils import (
        register_output_backward_hooks,  # lazy: optional dependency
    )

    def pre(mod, args):
        clear = getattr(engine.optimizer, "clear_backward_seen_flag", None)
        if clear is not None:
            clear()

    def post(mod, args, out):
        if torch.is_grad_enabled():
            register_output_backward_hooks(out, preprocess_once_fn=engine._backward_prologue,
                                           preprocess_per_tensor_fn=engine._backward_prologue_per_tensor)

    module.register_forward_pre_hook(pre)
    module.register_forward_hook(post)


@contextlib.contextmanager
def _weights_only_checkpoint_engine(engine):
    """DeepSpeed reads its checkpoint files with ``torch.load(weights_only=False)``; read them with
    ``weights_only=True`` (and DeepSpeed's few plain classes allowed) instead: a checkpoint is never unpickled."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import (  # lazy: optional dependency
        TorchCheckpointEngine,
    )

    real = engine.checkpoint_engine

    class WeightsOnly(TorchCheckpointEngine):
        def load(self, path, map_location=None):
            with torch.serialization.safe_globals(_deepspeed_safe_globals()):
                return torch.load(path, map_location=map_location, weights_only=True)

    engine.checkpoint_engine = WeightsOnly(getattr(real, "config_params", None))
    try:
        yield
    finally:
        engine.checkpoint_engine = real


def _deepspeed_safe_globals() -> list:
    from deepspeed.runtime.fp16.loss_scaler import (
        LossScaler,  # lazy: optional dependency
    )
    from deepspeed.runtime.zero.config import ZeroStageEnum  # lazy: optional dependency
    from deepspeed.utils.tensor_fragment import (
        fragment_address,  # lazy: optional dependency
    )

    return [LossScaler, ZeroStageEnum, fragment_address]
