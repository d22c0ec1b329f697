"""The one trainer shared by every training method (``rewardflow train CONFIG [key=value ...]``).

A method (``rewardflow/align/methods/<method>.py``) says how to collect data and what its loss is
(:mod:`rewardflow.align.method`); everything else lives here, once, one module per concern:

* ``config``: :class:`TrainConfig` (every key with its help), :func:`split_config`, :func:`load_train_config`;
* ``checkpoint``: atomic checkpoints with a verified manifest, resume, ``final/`` and ``best/``;
* ``writes``: fsync and a failed write (any exception) as one :class:`CheckpointWriteError` naming path and free space;
* ``signals``: SIGTERM / SIGINT finish the step and write a checkpoint (:class:`TrainingInterrupted`);
* ``distributed``: the ``Accelerator``, per-process batch, bucketed all-reduce / broadcast;
* ``sharding`` (with ``fsdp`` and ``zero``): the ``strategy`` (ddp, fsdp, zero2, zero3): sharding the denoiser, the
  lockstep step, sharded checkpoints and the memory report;
* ``reporting``: metrics.jsonl, tensorboard / wandb, sample grids, the reward-curve plot;
* ``selection``: :class:`BestTracker` (best/ and early stopping);
* ``evaluation``: held-out reward, watched rewards, evaluation hooks and sample grids (EMA weights swapped in);
* ``rng``: every process's random streams (seeding, their state in a checkpoint);
* ``loop``: :class:`Trainer` (build, collect -> loss -> step, evaluate, train).

What the trainer does:

* config: one flat YAML holding the trainer keys (:class:`TrainConfig`) and the method's keys (its
  ``config_class``); :func:`split_config` validates both *before* anything heavy loads and an unknown key names the
  valid keys of both;
* accelerate (mixed precision, ``cpu=True`` without CUDA, several processes: gradients are all-reduced
  explicitly, so the generator's denoiser is never wrapped and LoRA on/off for the reference keeps working);
* LoRA through :meth:`Generator.add_lora` (peft) or full fine-tuning with a frozen
  :meth:`Generator.snapshot_reference`; EMA of the trainable weights (diffusers ``EMAModel``);
* a NaN/inf guard: a non-finite loss or gradient norm skips the optimizer step (logged as ``skipped``); weights
  are never written from a non-finite value; non-finite rewards are masked by the methods
  (:func:`rewardflow.rewards.base.finite_mask`);
* SIGTERM / SIGINT finish the current step, write a checkpoint and raise :class:`TrainingInterrupted` (a second
  signal stops at once); every run log keeps exactly one record per step across kills and restarts;
* atomic checkpoints (written to a temporary directory with a ``manifest.json`` of sizes and sha256 written last,
  fsynced, renamed) holding the trainable weights, the optimizer, lr schedule, EMA, every RNG state, the step and
  ``method.state_dict()``, plus the weights as diffusers loads them (``pytorch_lora_weights.safetensors``, or the
  fine-tuned ``unet/`` / ``transformer/`` folder written by ``save_pretrained``); ``resume="auto"`` continues
  from the newest checkpoint that verifies (a corrupt one is skipped with a warning) exactly as an uninterrupted
  run would have; a failed write (disk full) keeps the earlier checkpoints and raises
  :class:`CheckpointWriteError` naming the path (docs/usage/robustness.md);
* one run directory: ``config.yaml`` (resolved), ``metrics.jsonl``, tensorboard events (``report_to``),
  ``checkpoints/``, ``samples/`` (grids), ``eval.jsonl``, ``reward_curve.png`` and ``final/`` (the LoRA, or the
  trainable weights and the fine-tuned denoiser folder; EMA applied).

Methods log collection statistics through ``ctx.log``; by convention ``reward_mean`` is the mean reward of the
samples collected for the step (drawn on the reward curve).
"""

from rewardflow.align.trainer.checkpoint import (
    CHECKPOINT_FILES,
    MANIFEST,
    CheckpointWriteError,
    find_latest_checkpoint,
    verify_checkpoint,
    write_manifest,
)
from rewardflow.align.trainer.config import (
    TrainConfig,
    apply_model_defaults,
    load_train_config,
    split_config,
)
from rewardflow.align.trainer.distributed import (
    make_accelerator,
    per_process_batch_size,
)
from rewardflow.align.trainer.loop import Trainer, train
from rewardflow.align.trainer.reporting import plot_reward_curve, save_image_grid
from rewardflow.align.trainer.selection import BestTracker
from rewardflow.align.trainer.signals import TrainingInterrupted

__all__ = ["CHECKPOINT_FILES", "MANIFEST", "BestTracker", "CheckpointWriteError", "TrainConfig", "Trainer",
           "TrainingInterrupted", "apply_model_defaults", "find_latest_checkpoint", "load_train_config",
           "make_accelerator", "per_process_batch_size", "plot_reward_curve", "save_image_grid", "split_config",
           "train", "verify_checkpoint", "write_manifest"]
