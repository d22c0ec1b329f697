"""Trainer keys (:class:`TrainConfig`) and the flat YAML that holds them next to a method's keys.

Every field carries its help text (``metadata["help"]``): ``rewardflow train --help-config [METHOD]`` prints it and
docs/usage/config.md is generated from it (:func:`rewardflow.config.config_table`). Values are validated when the
dataclass is built (``__post_init__``), so ``--print-config`` and the start-up check fail before any model loads.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, get_type_hints

from rewardflow.align.method import get_method, list_methods
from rewardflow.config import check_numbers, coerce_value, option, path_fields, read_config_dict

REPORT_TO = ("tensorboard", "wandb", "none")
MIXED_PRECISION = ("no", "fp16", "bf16")
OPTIMIZERS = ("adamw", "adam", "sgd")
LR_SCHEDULERS = ("constant", "cosine", "linear", "polynomial", "cosine_with_restarts")
STRATEGIES = ("ddp", "fsdp", "zero2", "zero3")
DTYPES = ("fp32", "fp16", "bf16", "float32", "float16", "bfloat16")
# the TrainConfig keys that are generator options (rewardflow.pipelines.options.GeneratorOptions)
GENERATOR_OPTION_KEYS = ("height", "width", "num_frames", "dtype", "attention", "gradient_checkpointing",
                         "vae_slicing", "vae_tiling", "max_sequence_length", "guidance_scale")


@dataclass
class TrainConfig:
    """Trainer keys. Method keys (beta, group size, ...) live in the method's ``config_class``."""

    # -- what to train, on what
    method: str = option("", "a registered training method (`rewardflow train --list-methods`)")
    model: str = option("", "diffusers pipeline directory, hub id, or an embedded model's name (e.g. toy)",
                        path=True)
    adapter: str | None = option(None, "generator adapter (`rewardflow models`); default: from model_index.json")
    reward: str | None = option(None, "reward spec NAME or NAME:W,NAME:W (a weighted sum); \"\" = none; unset: the "
                                  "model's own (embedded models only)")
    reward_kwargs: dict[str, dict] = option({}, "options of each reward by name, for reward and heldout_rewards, e.g. "
                                            "{hpsv2.1: {path: HPS_v2.1_compressed.pt}, clip: {path: FILE, model: "
                                            "ViT-H-14, logit_scale: true}} (`rewardflow rewards` lists the rewards; "
                                            "docs/usage/rewards.md their options)")
    prompts: str | None = option(None, "training prompts: a prompt file (one per line, or .jsonl with 'prompt') or a "
                                   "registered source (toy:train); unset: the model's own (embedded models only)",
                                 path=True)
    eval_prompts: str | None = option(None, "held-out evaluation prompts (same forms); \"\" = no evaluation",
                                      path=True)
    # -- how the model loads (rewardflow.pipelines.options.GeneratorOptions; unset: the pipeline's own default)
    height: int | None = option(None, "image / video height in pixels (unset: the pipeline's default, e.g. 1024 for "
                                "SD3 / FLUX, 480 for Wan)")
    width: int | None = option(None, "image / video width in pixels (unset: the pipeline's default)")
    num_frames: int | None = option(None, "video models: frames per sample (unset: the pipeline's default)")
    dtype: str | None = option(None, "dtype of the frozen model weights: fp32, fp16 or bf16 (unset: fp32); trainable "
                               "LoRA or fine-tuned weights and the optimizer state stay fp32")
    attention: str | None = option(None, "attention backend: auto (xformers on CUDA when installed, else PyTorch "
                                   "SDPA), sdpa or xformers (unset: auto)")
    vae_slicing: bool = option(False, "decode one batch element at a time (memory)")
    vae_tiling: bool = option(False, "decode in tiles (memory, large images / videos)")
    max_sequence_length: int | None = option(None, "T5 / UMT5 prompt length of SD3, FLUX, Wan, LTX, CogVideoX (unset: "
                                             "the pipeline's)")
    eval_per_category: int = option(10, "evaluation prompts per group of a grouped source (the toy's caption categories)")
    eval_hooks: tuple[str, ...] = option((), "extra evaluation hooks (rewardflow.eval.hooks) run on the eval samples, "
                                         "after those the eval prompt source names (toy:heldout -> toy_oracle)")
    heldout_rewards: tuple[str, ...] = option((), "rewards scored at evaluation but never optimized; hacking.jsonl warns "
                                              "when eval_reward rises while one of them falls")
    # -- length, output, resume
    max_steps: int = option(100, "optimizer steps")
    output_dir: str = option("runs/train", "run directory (config, metrics, checkpoints, samples, final/)")
    resume: str = option("auto", "auto (newest intact checkpoint in output_dir, if any), never, or a checkpoint path")
    resume_allow_changes: bool = option(False, "resume even when keys differ from the checkpoint's run (other than "
                                        "max_steps, logging, checkpoint and evaluation cadence); the changes are "
                                        "recorded in output_dir/config_changes.jsonl")
    seed: int = option(0, "seed of the prompt, noise and initialization streams (each process adds its rank)")
    # -- optimization
    lr: float = option(1e-4, "learning rate")
    lr_warmup_steps: int = option(0, "linear warm-up steps from 0, before lr_scheduler")
    lr_scheduler: str = option("constant", "diffusers get_scheduler after the warm-up: constant, cosine, linear, "
                                       "polynomial, cosine_with_restarts (decaying to 0 at max_steps)")
    optimizer: str = option("adamw", "adamw, adam or sgd")
    adam_beta1: float = option(0.9, "Adam beta1")
    adam_beta2: float = option(0.999, "Adam beta2")
    adam_eps: float = option(1e-8, "Adam epsilon")
    weight_decay: float = option(1e-4, "weight decay")
    grad_clip: float = option(1.0, "max gradient norm (0 = no clipping; the norm is still checked for NaN)")
    batch_size: int = option(8, "prompts per process per collect() call")
    grad_accum: int = option(1, "collect() calls accumulated into one optimizer step")
    global_batch_size: int = option(0, "prompts per optimizer step over all processes (0 = off); when set, batch_size = "
                                   "global_batch_size / (num_processes x grad_accum)")
    mixed_precision: str = option("no", "accelerate mixed precision: no, fp16 or bf16")
    # -- what is trainable
    lora_rank: int = option(8, "LoRA rank (peft); 0 = full fine-tuning with a frozen copy as the reference")
    lora_alpha: float = option(0.0, "LoRA alpha (0 = lora_rank)")
    lora_targets: tuple[str, ...] = option((), "LoRA target modules (default: the adapter's default_lora_targets)")
    init_lora: str | None = option(None, "continue training an existing LoRA (a directory with "
                                   "pytorch_lora_weights.safetensors or a .safetensors file; diffusers or kohya / "
                                   "A1111 layout) instead of a new one: its rank, alpha and targets replace lora_rank, "
                                   "lora_alpha and lora_targets; the reference policy stays the base model",
                                   path=True)
    ema_decay: float = option(0.0, "EMA decay of the trainable weights, used for eval and final/ (0 = no EMA)")
    # -- sampling
    sample_steps: int = option(4, "sampler steps of on-policy rollouts and of evaluation")
    guidance_scale: float = option(1.0, "classifier-free guidance scale (<= 1: no guidance, one forward pass)")
    gradient_checkpointing: bool = option(False, "gradient checkpointing inside the denoiser (memory)")
    # -- checkpoints, evaluation, selection
    save_every: int = option(0, "checkpoint every N steps (0 = only at the end)")
    keep_checkpoints: int = option(2, "newest checkpoints kept")
    eval_every: int = option(0, "evaluate every N steps (0 = before and after training only)")
    eval_at_start: bool = option(True, "evaluate before the first step")
    best_metric: str = option("", "an evaluation key to select on (eval_reward, heldout_NAME, oracle_accuracy, ...): "
                              "each evaluation that improves it writes best/ (as final/) and best.json")
    best_mode: str = option("max", "max or min: the direction of best_metric")
    early_stop_patience: int = option(0, "stop after N evaluations without improving best_metric (0 = never)")
    # -- logging, devices
    log_every: int = option(1, "write a metrics row every N steps")
    report_to: str = option("tensorboard", "tensorboard, wandb or none (metrics.jsonl is always written)")
    run_name: str | None = option(None, "wandb run name")
    device: str = option("auto", "auto, cpu or cuda")
    threads: int = option(0, "CPU intra-op threads of each process (0: the command's choice: --threads, else "
                          "OMP_NUM_THREADS, else the cores split over this machine's processes); --threads wins")
    collective_timeout_s: float = option(1800.0, "several processes: a collective waiting longer than this fails the "
                                             "run (a hung or dead rank becomes an error instead of a hang)")
    # -- sharding (docs/usage/distributed.md#sharding)
    strategy: str = option("ddp", "ddp (each process holds the whole model; gradients averaged), fsdp (torch FSDP2: "
                           "parameters, gradients and optimizer state sharded per transformer / UNet block), zero2 "
                           "(DeepSpeed ZeRO-2: gradients and optimizer state sharded) or zero3 (DeepSpeed ZeRO-3: "
                           "parameters too); ddp follows an accelerate config that selects FSDP or DeepSpeed")
    cpu_offload: bool = option(False, "fsdp / zero3: keep the sharded parameters in CPU memory between uses; zero2 / "
                               "zero3: the optimizer state too (slower; frees accelerator memory)")
    deepspeed_config: str | None = option(None, "zero2 / zero3: a DeepSpeed JSON config to start from instead of the "
                                          "one written from the trainer keys (the trainer still sets the stage, "
                                          "accumulation, clipping and precision; a conflicting value is an error)",
                                          path=True)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad value."""
        c = self
        checks = [(c.report_to in REPORT_TO, f"report_to must be one of {REPORT_TO}, got {c.report_to!r}"),
                  (c.mixed_precision in MIXED_PRECISION,
                   f"mixed_precision must be one of {MIXED_PRECISION}, got {c.mixed_precision!r}"),
                  (c.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got {c.optimizer!r}"),
                  (c.max_steps >= 1, f"max_steps must be >= 1, got {c.max_steps}"),
                  (c.batch_size >= 1, f"batch_size must be >= 1, got {c.batch_size}"),
                  (c.grad_accum >= 1, f"grad_accum must be >= 1, got {c.grad_accum}"),
                  (c.global_batch_size >= 0,
                   f"global_batch_size must be >= 0 (0 = off), got {c.global_batch_size}"),
                  (c.collective_timeout_s > 0, f"collective_timeout_s must be > 0, got {c.collective_timeout_s}"),
                  (c.lora_rank >= 0, f"lora_rank must be >= 0 (0 = full fine-tuning), got {c.lora_rank}"),
                  (not c.init_lora or c.lora_rank > 0,
                   "init_lora continues a LoRA: lora_rank must be > 0 (0 is full fine-tuning); the LoRA's own rank "
                   "is used"),
                  (0.0 <= c.ema_decay < 1.0, f"ema_decay must be in [0, 1), got {c.ema_decay}"),
                  (math.isfinite(c.lr) and c.lr > 0, f"lr must be > 0, got {c.lr}"),
                  (c.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, got {c.device!r}"),
                  (c.lr_scheduler in LR_SCHEDULERS,
                   f"lr_scheduler must be one of {LR_SCHEDULERS}, got {c.lr_scheduler!r}"),
                  (c.lr_warmup_steps >= 0, f"lr_warmup_steps must be >= 0, got {c.lr_warmup_steps}"),
                  (c.best_mode in ("max", "min"), f"best_mode must be max or min, got {c.best_mode!r}"),
                  (c.dtype is None or c.dtype in DTYPES, f"dtype must be one of {DTYPES}, got {c.dtype!r}"),
                  (c.attention is None or c.attention in ("auto", "sdpa", "xformers"),
                   f"attention must be auto, sdpa or xformers, got {c.attention!r}"),
                  (all(v is None or v >= 1 for v in (c.height, c.width, c.num_frames, c.max_sequence_length)),
                   "height, width, num_frames and max_sequence_length must be >= 1"),
                  (all(isinstance(v, dict) for v in c.reward_kwargs.values()),
                   "reward_kwargs maps each reward name to its options, e.g. {clip: {path: FILE}}"),
                  (c.strategy in STRATEGIES, f"strategy must be one of {STRATEGIES}, got {c.strategy!r}"),
                  (not c.cpu_offload or c.strategy != "ddp",
                   "cpu_offload needs a sharded strategy (strategy=fsdp, zero2 or zero3)"),
                  (not c.deepspeed_config or c.strategy in ("zero2", "zero3"),
                   f"deepspeed_config needs strategy=zero2 or zero3 (strategy={c.strategy})"),
                  (c.strategy == "ddp" or c.mixed_precision != "fp16",
                   f"strategy={c.strategy} supports mixed_precision=no or bf16, not fp16 (its loss scaling would "
                   "bypass the trainer's skip of non-finite steps); use mixed_precision=bf16"),
                  (c.strategy == "ddp" or c.ema_decay == 0,
                   f"ema_decay > 0 needs strategy=ddp: the EMA copy is not sharded (strategy={c.strategy}); set "
                   "ema_decay=0"),
                  (c.early_stop_patience >= 0, f"early_stop_patience must be >= 0, got {c.early_stop_patience}"),
                  (not c.early_stop_patience or c.best_metric,
                   ("early_stop_patience needs best_metric (the eval key to watch, e.g. "
                    "best_metric=heldout_toy_clip)")),
                  (not c.early_stop_patience or c.eval_every > 0,
                   "early_stop_patience needs eval_every > 0 (it counts evaluations without improvement)"),
                  (not c.best_metric.startswith("heldout_") or c.best_metric[8:] in c.heldout_rewards,
                   (f"best_metric={c.best_metric!r} names a held-out reward that is not in heldout_rewards "
                    f"{list(c.heldout_rewards)}; add it there (it is scored at eval, never optimized)"))]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        # the numbers where 0, a negative value (or, for every float, NaN / inf) means nothing
        check_numbers(c, at_least_1=("eval_per_category", "sample_steps", "keep_checkpoints", "log_every"),
                      positive=("adam_eps",), unit=("adam_beta1", "adam_beta2"),
                      non_negative=("threads", "save_every", "eval_every", "grad_clip", "weight_decay", "lora_alpha",
                                    "guidance_scale"))


def split_config(data: dict[str, Any]) -> tuple[TrainConfig, Any]:
    """A flat mapping (YAML + overrides) -> (:class:`TrainConfig`, the method's config). Fails on an unknown key
    (naming the valid keys of both) or a bad value of either *before* any model is loaded."""
    data = dict(data)
    name = data.get("method")
    if not name:
        raise ValueError("the config needs `method: NAME`; known methods: " + ", ".join(list_methods()))
    cls = get_method(str(name))
    tfields = {f.name for f in dataclasses.fields(TrainConfig)}
    mfields = {f.name for f in dataclasses.fields(cls.config_class)}
    clash = sorted(tfields & mfields)
    if clash:
        raise TypeError(f"{cls.__name__}.config_class reuses trainer keys {clash}; rename them")
    unknown = [k for k in data if k not in tfields | mfields]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(k, tfields | mfields, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown config key {k!r}.{hint} Trainer keys: {', '.join(sorted(tfields))}. "
                         f"{name} keys: {', '.join(sorted(mfields)) or '(none)'}")
    th, mh = get_type_hints(TrainConfig), get_type_hints(cls.config_class)
    tcfg = TrainConfig(**{k: coerce_value(v, th[k], k) for k, v in data.items() if k in tfields})
    mcfg = cls.config_class(**{k: coerce_value(v, mh[k], k) for k, v in data.items() if k in mfields})
    return tcfg, mcfg


MODEL_DEFAULT_KEYS = ("prompts", "eval_prompts", "reward")


def apply_model_defaults(c: TrainConfig, run_defaults: dict) -> TrainConfig:
    """Fill the run keys the config left unset (None) from the model family's ``run_defaults`` (only embedded
    models such as the toy declare prompts and rewards); a key still unset is an error naming every missing key.
    ``reward`` may stay unset for methods that need none (they say so at construction)."""
    fill = {k: run_defaults[k] for k in MODEL_DEFAULT_KEYS if getattr(c, k) is None and k in run_defaults}
    c = dataclasses.replace(c, **fill)
    missing = [k for k in ("prompts", "eval_prompts") if getattr(c, k) is None]
    if missing:
        raise ValueError(f"the config must name {' and '.join(missing)} for model {c.model or '(given in Python)'!r}: "
                         "prompts: a prompt file (one prompt per line, or .jsonl with a 'prompt' field) or a "
                         "registered source; eval_prompts: the same, or \"\" for no evaluation. Only embedded models "
                         "(the toy) supply their own.")
    return c if c.reward is not None else dataclasses.replace(c, reward="")


def load_train_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> tuple[TrainConfig, Any]:
    """YAML file + ``key=value`` overrides -> (TrainConfig, method config). Input paths written in the file
    (model, prompt files, datasets) resolve next to it (:mod:`rewardflow.config`). Nothing heavy is imported."""
    data = read_config_dict(path, overrides)
    if path is not None:  # read again, now knowing which of the method's keys are paths
        method = data.get("method")
        extra = [get_method(str(method)).config_class] if method else []
        data = read_config_dict(path, overrides, path_keys=path_fields(TrainConfig, *extra))
    return split_config(data)
