"""The one trainer shared by every training method (``rewardflow train CONFIG [key=value ...]``).

A method (``rewardflow/align/<method>.py``) says how to collect data and what its loss is
(:mod:`rewardflow.align.method`); everything else lives here, once:

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
* atomic checkpoints (written to a temporary directory with a ``manifest.json`` of sizes and sha256 written last,
  fsynced, renamed) holding the trainable weights, the optimizer, lr schedule, EMA, every RNG state, the step and
  ``method.state_dict()``; ``resume="auto"`` continues from the newest checkpoint that verifies (a corrupt one is
  skipped with a warning) exactly as an uninterrupted run would have; a failed write (disk full) keeps the earlier
  checkpoints and raises :class:`CheckpointWriteError` naming the path (docs/usage/robustness.md);
* one run directory: ``config.yaml`` (resolved), ``metrics.jsonl``, tensorboard events (``report_to``),
  ``checkpoints/``, ``samples/`` (grids), ``eval.jsonl``, ``reward_curve.png`` and ``final/`` (the LoRA or the
  trainable weights, EMA applied).

Methods log collection statistics through ``ctx.log``; by convention ``reward_mean`` is the mean reward of the
samples collected for the step (drawn on the reward curve).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_type_hints

import torch

from rewardflow.align.method import MethodContext, get_method
from rewardflow.eval.hooks import check_eval_hooks, run_eval_hooks
from rewardflow.io.prompts import load_prompt_source

REPORT_TO = ("tensorboard", "wandb", "none")
MIXED_PRECISION = ("no", "fp16", "bf16")
OPTIMIZERS = ("adamw", "adam", "sgd")
LR_SCHEDULERS = ("constant", "cosine", "linear", "polynomial", "cosine_with_restarts")


@dataclass
class TrainConfig:
    """Trainer keys. Method keys (beta, group size, ...) live in the method's ``config_class``."""

    method: str = ""                      # a registered method: see `rewardflow train --list-methods`
    model: str = ""                       # pipeline directory, hub id, or an embedded model's name (e.g. "toy")
    adapter: str | None = None            # generator adapter name (default: detected from model_index.json)
    reward: str | None = None             # reward spec: NAME or NAME:W,NAME:W (a weighted sum); "" = none
    prompts: str | None = None            # a prompt file (one per line, or .jsonl) or a registered source (toy:train)
    eval_prompts: str | None = None       # held-out prompts for evaluation (same forms); "" = no evaluation
    eval_per_category: int = 10           # eval prompts per group of a grouped source (the toy's caption categories)
    eval_hooks: tuple[str, ...] = ()      # extra evaluation hooks (rewardflow.eval.hooks) on the eval samples, after
                                          # the ones the eval prompt source names (toy:heldout -> toy_oracle)
    heldout_rewards: tuple[str, ...] = () # rewards scored at eval but never optimized; a warning (hacking.jsonl)
                                          # when eval_reward rises while one of them falls
    max_steps: int = 100                  # optimizer steps
    output_dir: str = "runs/train"
    resume: str = "auto"                  # "auto" (latest checkpoint in output_dir, if any), "never", or a path
    seed: int = 0
    lr: float = 1e-4
    lr_warmup_steps: int = 0              # linear warm-up (from 0) ...
    lr_scheduler: str = "constant"        # ... then diffusers' get_scheduler: constant, cosine, linear, polynomial,
                                          # cosine_with_restarts (decaying to 0 at max_steps)
    optimizer: str = "adamw"
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    weight_decay: float = 1e-4
    grad_clip: float = 1.0                # max gradient norm (0 = no clipping; the norm is still checked)
    batch_size: int = 8                   # prompts per process per collect() call
    grad_accum: int = 1                   # collect() calls accumulated into one optimizer step
    global_batch_size: int = 0            # prompts per optimizer step over all processes (0 = off); when set,
                                          # batch_size = global_batch_size / (num_processes * grad_accum)
    mixed_precision: str = "no"
    lora_rank: int = 8                    # 0 = full fine-tuning (a frozen copy is the reference)
    lora_alpha: float = 0.0               # 0 = lora_rank
    lora_targets: tuple[str, ...] = ()    # default: the adapter's default_lora_targets
    ema_decay: float = 0.0                # 0 = no EMA; else EMA of the trainable weights (used for eval/final)
    sample_steps: int = 4                 # sampling steps of on-policy rollouts and of evaluation
    guidance_scale: float = 1.0
    gradient_checkpointing: bool = False
    save_every: int = 0                   # checkpoint every N steps (0 = only at the end)
    keep_checkpoints: int = 2
    eval_every: int = 0                   # evaluate every N steps (0 = before and after training only)
    eval_at_start: bool = True
    best_metric: str = ""                 # an eval key to select on ("eval_reward", "heldout_NAME", "oracle_accuracy",
                                          # ...): every eval that improves it writes best/ (as final/) + best.json
    best_mode: str = "max"                # "max" or "min"
    early_stop_patience: int = 0          # stop after N evals without improving best_metric (0 = never)
    log_every: int = 1
    report_to: str = "tensorboard"
    run_name: str | None = None           # wandb run name
    device: str = "auto"                  # "auto", "cpu" or "cuda"
    collective_timeout_s: float = 1800.0  # several processes: a collective waiting longer than this fails the
                                          # run (a hung or dead rank becomes an error instead of a hang)


# ---------------------------------------------------------------------------------------------------- config


def split_config(data: dict[str, Any]) -> tuple[TrainConfig, Any]:
    """A flat mapping (YAML + overrides) -> (:class:`TrainConfig`, the method's config). Fails on an unknown key
    (naming the valid keys of both) or a bad value *before* any model is loaded."""
    from rewardflow.config import _coerce

    data = dict(data)
    name = data.get("method")
    if not name:
        raise ValueError("the config needs `method: NAME`; known methods: " + ", ".join(_known_methods()))
    cls = get_method(str(name))
    tfields = {f.name for f in dataclasses.fields(TrainConfig)}
    mfields = {f.name for f in dataclasses.fields(cls.config_class)}
    clash = sorted(tfields & mfields)
    if clash:
        raise TypeError(f"{cls.__name__}.config_class reuses trainer keys {clash}; rename them")
    unknown = [k for k in data if k not in tfields | mfields]
    if unknown:
        import difflib

        k = unknown[0]
        close = difflib.get_close_matches(k, tfields | mfields, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown config key {k!r}.{hint} Trainer keys: {', '.join(sorted(tfields))}. "
                         f"{name} keys: {', '.join(sorted(mfields)) or '(none)'}")
    th, mh = get_type_hints(TrainConfig), get_type_hints(cls.config_class)
    tcfg = TrainConfig(**{k: _coerce(v, th[k], k) for k, v in data.items() if k in tfields})
    mcfg = cls.config_class(**{k: _coerce(v, mh[k], k) for k, v in data.items() if k in mfields})
    _validate(tcfg)
    return tcfg, mcfg


def _known_methods() -> list[str]:
    from rewardflow.align.method import list_methods

    return list_methods()


def _validate(c: TrainConfig) -> None:
    checks = [(c.report_to in REPORT_TO, f"report_to must be one of {REPORT_TO}, got {c.report_to!r}"),
              (c.mixed_precision in MIXED_PRECISION,
               f"mixed_precision must be one of {MIXED_PRECISION}, got {c.mixed_precision!r}"),
              (c.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got {c.optimizer!r}"),
              (c.max_steps >= 1, f"max_steps must be >= 1, got {c.max_steps}"),
              (c.batch_size >= 1, f"batch_size must be >= 1, got {c.batch_size}"),
              (c.grad_accum >= 1, f"grad_accum must be >= 1, got {c.grad_accum}"),
              (c.global_batch_size >= 0, f"global_batch_size must be >= 0 (0 = off), got {c.global_batch_size}"),
              (c.collective_timeout_s > 0, f"collective_timeout_s must be > 0, got {c.collective_timeout_s}"),
              (c.lora_rank >= 0, f"lora_rank must be >= 0 (0 = full fine-tuning), got {c.lora_rank}"),
              (0.0 <= c.ema_decay < 1.0, f"ema_decay must be in [0, 1), got {c.ema_decay}"),
              (c.lr > 0, f"lr must be > 0, got {c.lr}"),
              (c.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, got {c.device!r}"),
              (c.lr_scheduler in LR_SCHEDULERS, f"lr_scheduler must be one of {LR_SCHEDULERS}, got "
                                                 f"{c.lr_scheduler!r}"),
              (c.lr_warmup_steps >= 0, f"lr_warmup_steps must be >= 0, got {c.lr_warmup_steps}"),
              (c.best_mode in ("max", "min"), f"best_mode must be max or min, got {c.best_mode!r}"),
              (c.early_stop_patience >= 0, f"early_stop_patience must be >= 0, got {c.early_stop_patience}"),
              (not c.early_stop_patience or c.best_metric,
               "early_stop_patience needs best_metric (the eval key to watch, e.g. best_metric=heldout_toy_clip)"),
              (not c.early_stop_patience or c.eval_every > 0,
               "early_stop_patience needs eval_every > 0 (it counts evaluations without improvement)"),
              (not c.best_metric.startswith("heldout_") or c.best_metric[8:] in c.heldout_rewards,
               f"best_metric={c.best_metric!r} names a held-out reward that is not in heldout_rewards "
               f"{list(c.heldout_rewards)}; add it there (it is scored at eval, never optimized)")]
    for ok, msg in checks:
        if not ok:
            raise ValueError(msg)


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
    """YAML file + ``key=value`` overrides -> (TrainConfig, method config). Nothing heavy is imported."""
    from rewardflow.config import read_config_dict

    return split_config(read_config_dict(path, overrides))


# ---------------------------------------------------------------------------------------------------- prompts


# ---------------------------------------------------------------------------------------------------- helpers


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb+") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(path)


# ---------------------------------------------------------------------------------------------------- checkpoints

MANIFEST = "manifest.json"  # written last inside a checkpoint: every other file with its size and sha256
CHECKPOINT_FILES = ("trainable.safetensors", "state.pt", "trainer.json")


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, permissions, ...). The partial checkpoint was removed and the
    earlier checkpoints are intact; ``errno`` is the one of the underlying error (``errno.ENOSPC`` for a full
    disk)."""


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(ckpt: str | os.PathLike) -> Path:
    """Write ``manifest.json`` listing every file of the checkpoint directory (relative path, size, sha256)."""
    ckpt = Path(ckpt)
    files = {p.relative_to(ckpt).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(ckpt.rglob("*")) if p.is_file() and p.name != MANIFEST}
    out = ckpt / MANIFEST
    out.write_text(json.dumps({"format": 1, "files": files}, indent=1))
    return out


def verify_checkpoint(ckpt: str | os.PathLike) -> str | None:
    """``None`` when the checkpoint is complete and every file matches its manifest (size and sha256); otherwise
    what is wrong with it (missing manifest, missing / truncated / corrupt file)."""
    ckpt = Path(ckpt)
    if not ckpt.is_dir():
        return "not a directory"
    m = ckpt / MANIFEST
    if not m.is_file():
        return f"{MANIFEST} is missing (an interrupted write, or a checkpoint from an older rewardflow)"
    try:
        files = json.loads(m.read_text())["files"]
        entries = [(str(k), int(v["size"]), str(v["sha256"])) for k, v in files.items()]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return f"{MANIFEST} is unreadable ({type(e).__name__}: {e})"
    listed = {k for k, _, _ in entries}
    for need in CHECKPOINT_FILES:
        if need not in listed:
            return f"{MANIFEST} does not list {need}"
    for rel, size, sha in entries:
        f = ckpt / rel
        if not f.is_file():
            return f"{rel} is missing"
        got = f.stat().st_size
        if got != size:
            return f"{rel} has {got} bytes but the manifest says {size} (truncated or overwritten)"
        if _sha256(f) != sha:
            return f"{rel} does not match its sha256 in the manifest (corrupt)"
    return None


def find_latest_checkpoint(ckpt_dir: str | os.PathLike, warn: bool = True) -> Path | None:
    """The newest ``step_*`` checkpoint in ``ckpt_dir`` that verifies (:func:`verify_checkpoint`). Newer ones that
    do not verify are skipped with a warning, never picked."""
    import warnings

    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    for p in sorted((p for p in ckpt_dir.glob("step_*") if p.is_dir()), reverse=True):
        problem = verify_checkpoint(p)
        if problem is None:
            return p
        if warn:
            warnings.warn(f"[rewardflow] skipping checkpoint {p}: {problem}; trying an older one (load it anyway "
                          "with resume=PATH only if you know it is complete)", RuntimeWarning, stacklevel=2)
    return None


def _trim_jsonl(path: Path, last_step: int) -> int:
    """Keep the records of ``path`` with ``step <= last_step`` (the steps a resume does not redo); a torn last line
    of a killed run is dropped too. Atomic (temporary file + rename). Returns how many lines were dropped."""
    if not path.is_file():
        return 0
    keep, dropped = [], 0
    for ln in path.read_text().splitlines():
        if not ln.strip():
            continue
        try:
            rec = json.loads(ln)
            ok = isinstance(rec, dict) and int(rec.get("step", 0)) <= last_step
        except (ValueError, TypeError):
            ok = False
        if ok:
            keep.append(ln)
        else:
            dropped += 1
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(ln + "\n" for ln in keep))
        os.replace(tmp, path)
    return dropped


class BestTracker:
    """Model selection and early stopping on one evaluation key (``best_metric``): ``update(ev)`` returns whether
    this evaluation is a new best (strictly better; the first finite value counts). ``bad`` counts the evaluations
    since the best; ``should_stop`` once it reaches ``patience`` (0 = never). A resumed run rebuilds the tracker from
    the kept ``eval.jsonl`` records (:meth:`replay`), so the continuation selects and stops as the uninterrupted one."""

    def __init__(self, metric: str, mode: str = "max", patience: int = 0):
        self.metric, self.mode, self.patience = metric, mode, patience
        self.value: float | None = None
        self.step: int | None = None
        self.bad = 0

    def update(self, ev: dict) -> bool:
        if self.metric not in ev:
            raise KeyError(f"best_metric={self.metric!r} is not an evaluation key; this run's evaluation reports: "
                           f"{', '.join(k for k in ev if k not in ('step', 'samples'))}")
        v = ev[self.metric]
        if not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            self.bad += 1  # a non-finite evaluation never becomes the best
            return False
        v = float(v)
        better = self.value is None or (v > self.value if self.mode == "max" else v < self.value)
        if better:
            self.value, self.step, self.bad = v, int(ev["step"]), 0
        else:
            self.bad += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad >= self.patience

    def replay(self, eval_file: Path) -> None:
        if eval_file.is_file():
            for ln in eval_file.read_text().splitlines():
                if ln.strip():
                    rec = json.loads(ln)
                    if self.metric in rec:
                        self.update(rec)

    def summary(self) -> dict[str, Any]:
        return {"metric": self.metric, "mode": self.mode, "value": self.value, "step": self.step}


def _rng_state(generators: dict[str, torch.Generator | None]) -> dict[str, torch.Tensor]:
    st = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    for k, g in generators.items():
        if g is not None:
            st[f"gen_{k}"] = g.get_state()
    return st


def _set_rng_state(st: dict[str, torch.Tensor], generators: dict[str, torch.Generator | None]) -> None:
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(st["cuda"]))
    for k, g in generators.items():
        if g is not None and f"gen_{k}" in st:
            g.set_state(st[f"gen_{k}"])


class _Reporter:
    """metrics.jsonl (always) + tensorboard / wandb."""

    def __init__(self, run_dir: Path, report_to: str, config: dict, run_name: str | None, main: bool,
                 resume_step: int | None = None):
        self.main = main
        self.tb = self.wb = None
        if not main:
            return
        self.metrics = open(run_dir / "metrics.jsonl", "a")  # noqa: SIM115 - open for the whole run
        if report_to == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError("report_to=tensorboard needs the `tensorboard` package (pip install "
                                  "tensorboard), or set report_to=none") from e
            # a resumed run redoes the steps after its checkpoint: purge their old events so curves do not double
            self.tb = SummaryWriter(str(run_dir / "tensorboard"),
                                    purge_step=resume_step + 1 if resume_step is not None else None)
        elif report_to == "wandb":
            try:
                import wandb
            except ImportError as e:
                raise ImportError("report_to=wandb needs `pip install wandb` (or report_to=tensorboard)") from e
            self.wb = wandb.init(project="rewardflow", name=run_name, config=config, dir=str(run_dir))

    def log(self, rec: dict, step: int, file=None) -> None:
        if not self.main:
            return
        (file or self.metrics).write(json.dumps(rec) + "\n")
        (file or self.metrics).flush()
        scalars = {k: v for k, v in rec.items() if isinstance(v, (int, float)) and k != "step"}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        if self.wb is not None:
            self.wb.log(scalars, step=step)

    def close(self) -> None:
        if not self.main:
            return
        self.metrics.close()
        if self.tb is not None:
            self.tb.close()
        if self.wb is not None:
            self.wb.finish()


def save_image_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int = 8) -> None:
    """images [B,3,H,W] (or video [B,T,3,H,W]: first frame) in [0, 1] -> one PNG grid."""
    from torchvision.utils import save_image

    if images.ndim == 5:
        images = images[:, 0]
    save_image(images.float().cpu().clamp(0, 1), str(path), nrow=nrow, padding=2, pad_value=1.0)


def plot_reward_curve(run_dir: str | os.PathLike) -> Path | None:
    """``reward_curve.png`` from metrics.jsonl (train ``reward_mean``) and eval.jsonl (held-out reward, oracle)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    read = lambda f: [json.loads(ln) for ln in f.read_text().splitlines() if ln.strip()] if f.is_file() else []
    train = [r for r in read(run_dir / "metrics.jsonl") if "reward_mean" in r]
    ev = [r for r in read(run_dir / "eval.jsonl") if "eval_reward" in r]
    if not train and not ev:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if train:
        ax.plot([r["step"] for r in train], [r["reward_mean"] for r in train], lw=1, alpha=0.7,
                label="train reward (on-policy samples)")
    if ev:
        ax.plot([r["step"] for r in ev], [r["eval_reward"] for r in ev], "o-", label="held-out reward")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("reward")
    if ev and "oracle_accuracy" in ev[0]:
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in ev], [r["oracle_accuracy"] for r in ev], "s--", color="tab:green",
                 label="held-out oracle accuracy")
        ax2.set_ylabel("oracle accuracy")
        ax2.legend(loc="lower right", fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    out = run_dir / "reward_curve.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


# ---------------------------------------------------------------------------------------------------- processes


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


def make_accelerator(c: TrainConfig):
    """The run's ``Accelerator``: CPU (gloo) whenever CUDA is unavailable or ``device=cpu``, a collective timeout of
    ``collective_timeout_s``, and two launch traps turned into messages:

    * a launcher started several processes (``WORLD_SIZE`` > 1) but accelerate did not join them into one process
      group: the processes would train as unsynchronized copies, so this is an error;
    * a launcher was asked for several processes but started one (``accelerate launch --cpu --num_processes N``
      starts a single process): a warning, the run continues on one process.
    """
    import datetime
    import warnings

    from accelerate import Accelerator, InitProcessGroupKwargs

    if c.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but CUDA is not available; use device=auto or device=cpu")
    cpu = c.device == "cpu" or (c.device == "auto" and not torch.cuda.is_available())
    world = _env_int("WORLD_SIZE")
    if world > 1 and cpu:
        # torchrun / `accelerate launch --multi_gpu` on a machine without CUDA: accelerate only builds the gloo
        # process group when it is told to use the CPU (without it, N independent single-process runs start)
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    pg = InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=float(c.collective_timeout_s)))
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
    if "FSDP" in dt or "DEEPSPEED" in dt:
        raise NotImplementedError(
            f"distributed_type={dt} is not supported yet: the trainer all-reduces gradients itself and never wraps "
            "the denoiser (accelerator.prepare), so FSDP / DeepSpeed would not shard anything (DeepSpeed would fail "
            "in backward). Use data parallelism: configs/accelerate/ddp_8gpu.yaml or torchrun")
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


def _allreduce_mean(tensors: list[torch.Tensor], acc, bucket_numel: int = 1 << 25) -> None:
    """Average ``tensors`` over processes in place, flattened into buckets of same dtype/device (one collective per
    bucket instead of one per tensor: LoRA has hundreds of small tensors)."""
    for bucket in _buckets(tensors, bucket_numel):
        flat = acc.reduce(torch.cat([t.reshape(-1) for t in bucket]), reduction="mean")
        _unflatten_into(flat, bucket)


def _broadcast_from_main(tensors: list[torch.Tensor], acc, bucket_numel: int = 1 << 25) -> None:
    """Overwrite ``tensors`` in place with process 0's values (flattened buckets), so that every process starts from
    the same weights whatever it drew from its own seed."""
    import torch.distributed as dist

    for bucket in _buckets(tensors, bucket_numel):
        flat = torch.cat([t.detach().reshape(-1) for t in bucket])
        dist.broadcast(flat, src=0)
        _unflatten_into(flat, bucket)


# ---------------------------------------------------------------------------------------------------- trainer


class Trainer:
    """Build everything from a (TrainConfig, method config) pair and run :meth:`train`.

    ``generator`` / ``reward`` may be passed in (tests, notebooks); otherwise they are loaded from the config.
    """

    def __init__(self, config: TrainConfig, method_config: Any, generator=None, reward=None):
        self.config = c = config
        _validate(c)
        self.method_config = method_config
        self.accelerator = make_accelerator(c)
        acc = self.accelerator
        if c.global_batch_size:
            self.config = c = dataclasses.replace(
                c, batch_size=per_process_batch_size(c.global_batch_size, acc.num_processes, c.grad_accum))
        self.run_dir = Path(c.output_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        if acc.is_main_process:
            (self.run_dir / "samples").mkdir(parents=True, exist_ok=True)
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)

        torch.manual_seed(c.seed + acc.process_index)
        self.prompt_rng = torch.Generator().manual_seed(c.seed * 1000 + acc.process_index)
        self.sample_rng = torch.Generator().manual_seed(c.seed * 1000 + 500 + acc.process_index)

        # -- generator, trainable weights, reference
        if generator is None:
            from rewardflow.pipelines.registry import load_generator

            if not c.model:
                raise ValueError("the config needs `model:` (a diffusers pipeline directory, a hub id, or an "
                                 "embedded model such as toy)")
            generator = load_generator(c.model, adapter=c.adapter, guidance_scale=c.guidance_scale)
        self.gen = generator
        self.config = c = apply_model_defaults(c, getattr(type(generator), "run_defaults", {}))
        self.gen.guidance_scale = c.guidance_scale
        if self.gen.device != acc.device:
            self._move_generator(acc.device)
        self.method_cls = get_method(c.method)
        self.trains_generator = bool(self.method_cls.trains_generator)
        if self.trains_generator:
            if c.lora_rank > 0:
                self.gen.add_lora(rank=c.lora_rank, alpha=c.lora_alpha or None,
                                  target_modules=c.lora_targets or None)
            else:
                self.gen.denoiser.requires_grad_(True)
            if c.lora_rank == 0 and self.method_cls.uses_reference:
                self.gen.snapshot_reference()
            if c.gradient_checkpointing:
                self.gen.enable_gradient_checkpointing()
            self.gen.denoiser.train()
            if acc.num_processes > 1:  # LoRA init drew from a per-process seed: start every process from rank 0's
                _broadcast_from_main([p.data for p in self.gen.denoiser.parameters() if p.requires_grad], acc)
        else:  # the method trains its own module (e.g. a latent reward head); the generator stays frozen
            self.gen.denoiser.requires_grad_(False).eval()

        # -- reward
        if reward is None and c.reward:
            reward = self._build_reward(c.reward)
        self.reward = reward
        if self.reward is not None:
            self.reward.to(acc.device).requires_grad_(False).eval()

        # -- method
        self._log_buffer: dict[str, list[float]] = {}
        self.ctx = MethodContext(generator=self.gen, reward=self.reward, device=acc.device, rng=self.sample_rng,
                                 sample_steps=c.sample_steps, batch_size=c.batch_size,
                                 process_index=acc.process_index, num_processes=acc.num_processes,
                                 gather=self._gather, log=self._ctx_log)
        self.method = self.method_cls(method_config, self.ctx)
        module = self.gen.denoiser if self.trains_generator else self.method.trainable_module()
        if module is None:
            raise TypeError(f"method {c.method!r} sets trains_generator=False but trainable_module() returned None")
        module.train()
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.param_names = [n for n, p in module.named_parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("no trainable parameters (LoRA targets matched nothing?); set lora_targets")
        if acc.num_processes > 1 and not self.trains_generator:  # the method's own module, randomly initialized
            _broadcast_from_main([p.data for p in self.params], acc)
        self.params_before = sum(p.numel() for p in self.params)
        self._last_collected: list | None = None

        # -- optimizer, schedule, EMA
        if c.optimizer in ("adamw", "adam"):
            opt_cls = torch.optim.AdamW if c.optimizer == "adamw" else torch.optim.Adam
            self.optimizer = opt_cls(self.params, lr=c.lr, betas=(c.adam_beta1, c.adam_beta2), eps=c.adam_eps,
                                     weight_decay=c.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(self.params, lr=c.lr, weight_decay=c.weight_decay)
        self.lr_scheduler = self._make_lr_scheduler()
        self.optimizer = acc.prepare_optimizer(self.optimizer)
        self.ema = None
        if c.ema_decay > 0:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self.params, decay=c.ema_decay)
        self.prompts = load_prompt_source(c.prompts)
        self.eval_source = load_prompt_source(c.eval_prompts) if c.eval_prompts else None
        self.eval_hook_names = tuple(dict.fromkeys(
            (self.eval_source.eval_hooks if self.eval_source is not None else ()) + tuple(c.eval_hooks)))
        check_eval_hooks(self.eval_hook_names)
        # held-out rewards: scored at every eval; a RewardHackingMonitor warns when eval_reward rises while one of
        # them falls (eval/monitor.py)
        self.heldout = {n.split("(")[0].strip(): self._build_reward(n).to(acc.device).eval()
                        for n in c.heldout_rewards}
        self.monitor = None
        if self.heldout and acc.is_main_process:
            from rewardflow.eval.monitor import RewardHackingMonitor

            self.monitor = RewardHackingMonitor("eval_reward", [f"heldout_{n}" for n in self.heldout],
                                                log_file=self.run_dir / "hacking.jsonl")
        self.step = 0
        self.samples_seen = 0
        self.reporter = None

    # ------------------------------------------------------------------ construction helpers
    def _move_generator(self, device) -> None:
        pipe = getattr(self.gen, "pipe", None)
        if pipe is not None:
            pipe.to(device)
        else:
            self.gen.denoiser.to(device)

    @staticmethod
    def _build_reward(spec: str):
        try:
            from rewardflow.rewards.combine import build_reward
        except ImportError:  # pragma: no cover - older combine.py
            from rewardflow.rewards.base import load_reward

            return load_reward(spec)
        return build_reward(spec)

    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        return self.accelerator.gather(t) if self.accelerator.num_processes > 1 else t

    def _ctx_log(self, d: dict[str, float]) -> None:
        for k, v in d.items():
            v = float(v.item() if torch.is_tensor(v) else v)
            self._log_buffer.setdefault(k, []).append(v)

    def effective_batch(self) -> dict[str, int]:
        c, acc = self.config, self.accelerator
        per_prompt = int(getattr(self.method, "samples_per_prompt", 1) or 1)
        prompts = c.batch_size * c.grad_accum * acc.num_processes
        # a method that reuses each rollout for K optimizer steps (updates_per_rollout) draws 1/K new samples per step
        reuse = int(getattr(getattr(self.method, "reuse", None), "updates", 1) or 1)
        return {"batch_size": c.batch_size, "grad_accum": c.grad_accum, "num_processes": acc.num_processes,
                "samples_per_prompt": per_prompt, "prompts_per_step": prompts, "samples_per_step": prompts * per_prompt,
                "updates_per_rollout": reuse, "new_samples_per_step": prompts * per_prompt / reuse}

    def describe(self) -> str:
        e = self.effective_batch()
        return (f"[rewardflow] method={self.config.method} trainable parameters={self.params_before:,} "
                f"({'LoRA r=' + str(self.config.lora_rank) if self.config.lora_rank else 'full fine-tuning'})\n"
                f"[rewardflow] effective batch: {e['batch_size']} prompts/process x {e['grad_accum']} grad_accum x "
                f"{e['num_processes']} processes = {e['prompts_per_step']} prompts per optimizer step; "
                f"x {e['samples_per_prompt']} samples/prompt = {e['samples_per_step']} samples per optimizer step"
                + (f"; each rollout serves {e['updates_per_rollout']} optimizer steps (updates_per_rollout): "
                   f"{e['samples_per_step']} / {e['updates_per_rollout']} = {e['new_samples_per_step']:g} new samples "
                   "per step" if e["updates_per_rollout"] > 1 else "")
                + (f"\n[rewardflow] global_batch_size={self.config.global_batch_size}: batch_size = "
                   f"{self.config.global_batch_size} / ({e['num_processes']} processes x {e['grad_accum']} grad_accum)"
                   f" = {e['batch_size']}" if self.config.global_batch_size else "")
                + (f"\n[rewardflow] {e['num_processes']} processes ({self.accelerator.distributed_type}, "
                   f"{getattr(self.accelerator.state, 'backend', None) or 'no backend'}); each process samples its own "
                   "prompts, gradients are averaged over processes" if e["num_processes"] > 1 else ""))

    # ------------------------------------------------------------------ checkpoints
    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().contiguous().clone() for n, p in zip(self.param_names, self.params)}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        missing = [n for n in self.param_names if n not in state]
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} trainable tensors (e.g. {missing[0]}): it was saved "
                             "with a different lora_rank / lora_targets / model")
        with torch.no_grad():
            for n, p in zip(self.param_names, self.params):
                p.copy_(state[n].to(p.device, p.dtype))

    def save_checkpoint(self) -> Path | None:
        """Atomically write ``checkpoints/step_{N}``: every file into a temporary directory, ``manifest.json``
        (sizes and sha256 of the others) last, fsync, rename. A failed write (disk full, ...) removes the temporary
        directory, keeps the earlier checkpoints and raises :class:`CheckpointWriteError` naming the path, on every
        process (process 0 writes; its outcome is broadcast)."""
        acc = self.accelerator
        acc.wait_for_everyone()
        # every process's RNG (its prompts and noise) and method state (e.g. its rollout cache), so that each
        # process continues exactly
        method_state = self.method.state_dict()
        shared = set(self.method.shared_state_keys)
        mine = {"rng": _rng_state({"prompt": self.prompt_rng, "sample": self.sample_rng}),
                "method": {k: v for k, v in method_state.items() if k not in shared}}
        if acc.num_processes > 1:
            import torch.distributed as dist

            per_process: list = [None] * acc.num_processes
            dist.all_gather_object(per_process, mine)
        else:
            per_process = [mine]
        err, final = None, None
        if acc.is_main_process:
            try:
                final = self._write_checkpoint(mine, method_state, per_process)
            except Exception as e:  # noqa: BLE001 - re-raised below, after the other processes have been told
                err = e
        # process 0's outcome on every process: a failed write stops them all with the same message instead of
        # leaving the others waiting in the next collective until collective_timeout_s
        failed = self._main_value(None if err is None else (getattr(err, "errno", None),
                                                            getattr(err, "strerror", None) or str(err)))
        if err is not None:
            raise err
        if failed is not None:
            msg = f"process 0 failed to write the checkpoint: {failed[1]}"
            raise CheckpointWriteError(failed[0], msg) if failed[0] is not None else CheckpointWriteError(msg)
        return final

    def _write_checkpoint(self, mine: dict, method_state: dict, per_process: list) -> Path:
        """Process 0's part of :meth:`save_checkpoint`: the atomic write and the pruning."""
        from safetensors.torch import save_file

        final = self.ckpt_dir / f"step_{self.step:07d}"
        tmp = self.ckpt_dir / f".tmp_step_{self.step:07d}"
        old = self.ckpt_dir / f".old_step_{self.step:07d}"
        for stale in [*self.ckpt_dir.glob(".tmp_step_*"), *self.ckpt_dir.glob(".old_step_*")]:
            shutil.rmtree(stale, ignore_errors=True)  # leftovers of a killed save: never candidates for resume
        cur = tmp
        try:
            tmp.mkdir(parents=True)
            cur = tmp / "trainable.safetensors"
            save_file(self.trainable_state(), str(cur))
            cur = tmp / "state.pt"
            torch.save({"optimizer": self.optimizer.state_dict(), "lr_scheduler": self.lr_scheduler.state_dict(),
                        "ema": None if self.ema is None else self.ema.state_dict(),
                        "rng": mine["rng"], "method": method_state,  # process 0's (older readers, shared keys)
                        "per_process": per_process}, cur)
            cur = tmp / "trainer.json"
            cur.write_text(json.dumps({"step": self.step, "samples_seen": self.samples_seen,
                                       "method": self.config.method}))
            cur = tmp / MANIFEST
            write_manifest(tmp)
            cur = tmp
            _fsync_tree(tmp)
            cur = final
            if final.exists():  # the same step written again (a resumed run redoing it): swap, then delete
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
            os.replace(tmp, final)
            _fsync_dir(self.ckpt_dir)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if old.exists() and not final.exists():
                os.replace(old, final)
            kept = sorted(p.name for p in self.ckpt_dir.glob("step_*"))
            raise CheckpointWriteError(
                e.errno, f"could not write the checkpoint of step {self.step}: writing {cur} failed "
                f"({e.strerror or e}). The partial checkpoint was removed; the earlier checkpoints are intact "
                f"({', '.join(kept) if kept else 'none yet'} in {self.ckpt_dir}). Free disk space (or fix the "
                "permissions) and rerun the same command with resume=auto to continue from the latest one.") from e
        shutil.rmtree(old, ignore_errors=True)
        # prune: keep the newest `keep_checkpoints` up to this step (newer ones are stale leftovers of a run that was
        # resumed from an earlier step; they are overwritten as this run reaches them)
        done = sorted(p for p in self.ckpt_dir.glob("step_*")
                      if p.name[5:].isdigit() and int(p.name[5:]) <= self.step)
        for stale in done[:-max(1, self.config.keep_checkpoints)]:
            shutil.rmtree(stale, ignore_errors=True)
        return final

    def latest_checkpoint(self) -> Path | None:
        """The newest checkpoint whose manifest verifies; corrupt or incomplete ones are skipped with a warning."""
        return find_latest_checkpoint(self.ckpt_dir)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore the trainable weights, optimizer, lr schedule, EMA, every RNG (the prompt RNG is the data
        position), the step, the sample count and ``method.state_dict()`` (e.g. the RolloutReuse cache)."""
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / "trainer.json").is_file():
            raise FileNotFoundError(f"{path} is not a complete rewardflow checkpoint (trainer.json missing); "
                                    "use resume=auto to pick the newest complete one")
        problem = verify_checkpoint(path)
        if problem is not None and (path / MANIFEST).is_file():
            raise ValueError(f"checkpoint {path} is corrupt: {problem}. Use resume=auto to fall back to the newest "
                             "intact checkpoint, or resume=PATH with an older one")
        if problem is not None:
            import warnings

            warnings.warn(f"[rewardflow] checkpoint {path} has no {MANIFEST}; loading it unverified", RuntimeWarning,
                          stacklevel=2)
        meta = json.loads((path / "trainer.json").read_text())
        if meta.get("method") != self.config.method:
            raise ValueError(f"checkpoint {path} was written by method {meta.get('method')!r}, "
                             f"not {self.config.method!r}")
        self.load_trainable_state(load_file(str(path / "trainable.safetensors")))
        st = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(st["optimizer"])
        self.lr_scheduler.load_state_dict(st["lr_scheduler"])
        if self.ema is not None and st["ema"] is not None:
            self.ema.load_state_dict(st["ema"])
        self.step, self.samples_seen = int(meta["step"]), int(meta["samples_seen"])
        self._restore_process_state(st)
        # a restored rollout cache (RolloutReuse) is re-served, not re-collected: it must not count as new samples
        self._last_collected = getattr(getattr(self.method, "reuse", None), "cache", None)

    def _restore_process_state(self, st: dict) -> None:
        """Each process takes its own saved RNG states and method state (exact continuation). A checkpoint written
        with another number of processes (or by an older rewardflow, process 0's states only) cannot be continued
        exactly: every process takes process 0's method state, process 0 its RNG states, and the others reseed
        deterministically from (seed, rank, step), so that no two processes draw the same prompts and noise."""
        acc, gens = self.accelerator, {"prompt": self.prompt_rng, "sample": self.sample_rng}
        per = st.get("per_process")
        if per is not None and len(per) == acc.num_processes:
            _set_rng_state(per[acc.process_index]["rng"], gens)
            shared = {k: v for k, v in st["method"].items() if k in set(self.method.shared_state_keys)}
            self.method.load_state_dict({**per[acc.process_index]["method"], **shared})
            return
        self.method.load_state_dict(st["method"])
        if acc.process_index == 0:
            _set_rng_state(st["rng"], gens)
        else:
            s = self.config.seed * 1000 + acc.process_index + 1_000_003 * self.step
            torch.manual_seed(s)
            self.prompt_rng.manual_seed(s)
            self.sample_rng.manual_seed(s + 500)
        if acc.is_main_process:
            n = len(per) if per is not None else "an unknown number of"
            print(f"[rewardflow] the checkpoint was written by {n} processes, this run has {acc.num_processes}: "
                  "process 0 continues its saved random streams, the others reseed (the continuation is "
                  "deterministic but not the uninterrupted run's)", flush=True)

    def maybe_resume(self) -> bool:
        r = self.config.resume
        if r == "never":
            return False
        path = self.latest_checkpoint() if r == "auto" else Path(r)
        if path is None:
            return False
        self.load_checkpoint(path)
        if self.accelerator.is_main_process:  # the steps after the checkpoint are redone: drop their old records
            for f in ("metrics.jsonl", "eval.jsonl", "hacking.jsonl"):
                _trim_jsonl(self.run_dir / f, self.step)
        print(f"[rewardflow] resumed from {path} at step {self.step}", flush=True)
        return True

    # ------------------------------------------------------------------ one optimizer step
    def train_step(self) -> dict[str, float]:
        """Collect, accumulate the loss over micro-batches, guard against non-finite values, step."""
        c, acc, m = self.config, self.accelerator, self.method
        self._log_buffer = {}
        self.optimizer.zero_grad(set_to_none=True)
        losses, diags, finite = [], {}, True
        batches = []
        for _ in range(c.grad_accum):
            prompts = self.prompts.sample(c.batch_size, self.prompt_rng)
            with torch.set_grad_enabled(m.collect_needs_grad), acc.autocast():
                collected = m.collect(prompts, self.step)
            batches.append(collected)
            # a method that re-serves the same rollout (updates_per_rollout > 1) drew no new samples
            if collected is not self._last_collected:
                self.samples_seen += (c.batch_size * int(getattr(m, "samples_per_prompt", 1) or 1)
                                      * acc.num_processes)
            self._last_collected = collected
        n_micro = sum(len(b) for b in batches) * max(1, m.inner_epochs)
        for _epoch in range(max(1, m.inner_epochs)):
            for collected in batches:
                for mb in collected:
                    with acc.autocast():
                        loss, d = m.loss(mb, self.step)
                    if not torch.isfinite(loss.detach()).all():
                        finite = False
                        losses.append(float("nan"))
                        continue
                    if loss.requires_grad:
                        acc.backward(loss / n_micro)
                    losses.append(float(loss.detach()))
                    for k, v in d.items():
                        diags.setdefault(k, []).append(float(v.item() if torch.is_tensor(v) else v))
        has_grad = any(p.grad is not None for p in self.params)
        loss_sum, n_finite = sum(x for x in losses if math.isfinite(x)), sum(math.isfinite(x) for x in losses)
        if acc.num_processes > 1:
            # one small all-reduce so that every process takes the same decision (step or skip) and logs the loss
            # averaged over all processes
            flags = acc.reduce(torch.tensor([float(not finite), float(has_grad), loss_sum, float(n_finite)],
                                            dtype=torch.float64, device=acc.device), reduction="sum").cpu()
            finite, has_grad = bool(flags[0] == 0), bool(flags[1] > 0)
            loss_sum, n_finite = float(flags[2]), int(flags[3])
            # average gradients over processes (the denoiser is deliberately not DDP-wrapped): each process divided
            # its loss by its number of micro-batches, so the mean over processes is the gradient of the mean loss
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            _allreduce_mean([p.grad for p in self.params], acc)
        grads = [p.grad for p in self.params if p.grad is not None] if has_grad else []
        if grads:
            if acc.scaler is not None:
                acc.unscale_gradients()
            gnorm = torch.nn.utils.clip_grad_norm_(self.params, c.grad_clip if c.grad_clip > 0 else float("inf"))
            gnorm = float(gnorm)
        else:
            gnorm = 0.0
        skipped = (not finite) or (not math.isfinite(gnorm)) or not grads
        reason = ("non-finite loss" if not finite else "non-finite gradient" if not math.isfinite(gnorm)
                  else "no gradient" if not grads else "")
        if skipped:
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.optimizer.step()
            self.lr_scheduler.step()
            if self.ema is not None:
                self.ema.step(self.params)
        self.optimizer.zero_grad(set_to_none=True)
        rec = {"step": self.step + 1, "loss": float(loss_sum / max(1, n_finite)),
               "grad_norm": gnorm, "lr": self.lr_scheduler.get_last_lr()[0], "skipped": int(skipped),
               "samples": self.samples_seen}
        if skipped:
            rec["skip_reason"] = reason
        rec.update({k: sum(v) / len(v) for k, v in diags.items()})
        rec.update({k: sum(v) / len(v) for k, v in self._log_buffer.items()})
        return rec

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, tag: str | None = None) -> dict[str, float]:
        """Mean reward on the held-out prompts (fixed noise), the evaluation hooks' metrics, a sample grid.
        Runs with the EMA weights when EMA is on; leaves every RNG untouched."""
        if self.eval_source is None or not self.accelerator.is_main_process:
            return {}
        c = self.config
        prompts = self.eval_source.eval_list(c.eval_per_category, seed=0)
        if not self.trains_generator:  # the generator is frozen: the method reports on its own module
            with torch.random.fork_rng(devices=[]), self._ema_weights():
                return {"step": self.step, "samples": self.samples_seen, **self.method.evaluate(prompts)}
        with torch.random.fork_rng(devices=[]), self._ema_weights():
            was_training = self.gen.denoiser.training
            self.gen.denoiser.eval()
            noise = torch.randn((len(prompts), *self.gen.latent_shape), generator=torch.Generator().manual_seed(0))
            imgs = torch.cat([self.gen.generate(prompts[i:i + 50], c.sample_steps,
                                                noise=noise[i:i + 50].to(self.gen.device, self.gen.dtype))
                              for i in range(0, len(prompts), 50)]).float()
            self.gen.denoiser.train(was_training)
        out: dict[str, float] = {"step": self.step, "samples": self.samples_seen}
        if self.reward is not None:
            r = torch.cat([self.reward(imgs[i:i + 50].to(self.accelerator.device), prompts[i:i + 50]).float().cpu()
                           for i in range(0, len(prompts), 50)])
            out["eval_reward"] = float(r[torch.isfinite(r)].mean()) if torch.isfinite(r).any() else float("nan")
        for name, rw in self.heldout.items():  # held-out rewards: watched for reward hacking, never optimized
            r = torch.cat([rw(imgs[i:i + 50].to(self.accelerator.device), prompts[i:i + 50]).float().cpu()
                           for i in range(0, len(prompts), 50)])
            out[f"heldout_{name}"] = float(r[torch.isfinite(r)].mean()) if torch.isfinite(r).any() else float("nan")
        out.update(run_eval_hooks(self.eval_hook_names, imgs.cpu(), prompts))
        idx = list(range(0, len(prompts), max(1, len(prompts) // 16)))[:16]
        save_image_grid(imgs[idx], self.run_dir / "samples" / f"{tag or f'step_{self.step:07d}'}.png", nrow=8)
        return out

    def _ema_weights(self):
        """Context: the EMA weights swapped into the trainable parameters (no-op without EMA)."""
        import contextlib

        if self.ema is None:
            return contextlib.nullcontext()
        ema, params = self.ema, self.params

        @contextlib.contextmanager
        def swap():
            ema.store(params)
            ema.copy_to(params)
            try:
                yield
            finally:
                ema.restore(params)

        return swap()

    # ------------------------------------------------------------------ the loop
    def train(self) -> dict[str, Any]:
        from tqdm.auto import tqdm

        c, acc = self.config, self.accelerator
        resumed = self.maybe_resume()
        if acc.is_main_process:
            import yaml

            resolved = {**dataclasses.asdict(c), **dataclasses.asdict(self.method_config)}
            resolved = {k: list(v) if isinstance(v, tuple) else v for k, v in resolved.items()}
            e = self.effective_batch()
            head = (f"# launched with num_processes={e['num_processes']} ({acc.distributed_type}): "
                    f"{e['batch_size']} prompts/process x {e['grad_accum']} grad_accum x {e['num_processes']} "
                    f"processes = {e['prompts_per_step']} prompts per optimizer step\n")
            (self.run_dir / "config.yaml").write_text(head + yaml.safe_dump(resolved, sort_keys=False))
        self.reporter = _Reporter(self.run_dir, c.report_to, {**dataclasses.asdict(c)}, c.run_name,
                                  acc.is_main_process, resume_step=self.step if resumed else None)
        if acc.is_main_process:
            print(self.describe(), flush=True)
        # open for the whole run
        eval_file = open(self.run_dir / "eval.jsonl", "a") if acc.is_main_process else None  # noqa: SIM115
        history: list[dict] = []
        best = BestTracker(c.best_metric, c.best_mode, c.early_stop_patience) if c.best_metric else None
        if best is not None and resumed and acc.is_main_process:
            best.replay(self.run_dir / "eval.jsonl")
        if self.monitor is not None and resumed:  # peaks and flags as the uninterrupted run had them, no re-logging
            self.monitor.replay(self.run_dir / "eval.jsonl")

        def do_eval(tag=None):
            ev = self.evaluate(tag)
            if ev and self.monitor is not None:
                ev["hacking_warnings"] = len(self.monitor.update(ev["step"], ev))
            if ev:
                self.reporter.log(ev, self.step, file=eval_file)
                history.append(ev)
                print("[rewardflow] eval " + json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                                         for k, v in ev.items()}), flush=True)
            if ev and best is not None and best.update(ev):
                self.save_final("best", info={**best.summary(), "eval": ev})
            return ev

        first = do_eval() if (c.eval_at_start and not resumed) else {}
        t0 = time.time()
        bar = tqdm(total=c.max_steps, initial=self.step, desc=c.method, disable=not acc.is_main_process,
                   dynamic_ncols=True)
        skipped, stopped_early = 0, False
        while self.step < c.max_steps:
            rec = self.train_step()
            self.step += 1
            skipped += rec["skipped"]
            rec["seconds"] = round(time.time() - t0, 2)
            if rec["skipped"]:
                print(f"[rewardflow] step {self.step}: skipped ({rec['skip_reason']}); weights unchanged",
                      flush=True)
            if self.step % max(1, c.log_every) == 0 or rec["skipped"] or self.step == c.max_steps:
                self.reporter.log(rec, self.step)
            bar.update(1)
            bar.set_postfix({k: f"{rec[k]:.4g}" for k in ("loss", "reward_mean") if k in rec})
            if c.save_every and self.step % c.save_every == 0 and self.step < c.max_steps:
                self.save_checkpoint()
            if c.eval_every and self.step % c.eval_every == 0 and self.step < c.max_steps:
                do_eval()
                if best is not None and self._main_flag(best.should_stop):
                    stopped_early = True
                    if acc.is_main_process:
                        where = ("no finite value yet" if best.value is None else
                                 f"best {best.value:.4g} at step {best.step}; weights in {self.run_dir / 'best'}")
                        print(f"[rewardflow] early stop at step {self.step}: {c.best_metric} did not improve for "
                              f"{best.bad} evaluations ({where})", flush=True)
                    break
        bar.close()
        self.save_checkpoint()
        # an early stop has just evaluated these weights
        last = history[-1] if stopped_early and history else do_eval()
        final_dir = self.save_final()
        if eval_file is not None:
            eval_file.close()
        self.reporter.close()
        curve = plot_reward_curve(self.run_dir) if acc.is_main_process else None
        summary = {"run_dir": str(self.run_dir), "steps": self.step, "samples": self.samples_seen,
                   "skipped_steps": skipped, "seconds": round(time.time() - t0, 1), "final": str(final_dir),
                   "reward_curve": None if curve is None else str(curve),
                   "num_processes": acc.num_processes, "effective_batch": self.effective_batch(),
                   "before": first, "after": last, "early_stopped": stopped_early}
        if best is not None and acc.is_main_process:
            summary["best"] = {**best.summary(), "dir": str(self.run_dir / "best"),
                               "eval": next((h for h in history if h.get("step") == best.step), None)}
        if acc.is_main_process:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        return summary

    def _make_lr_scheduler(self):
        from diffusers.optimization import get_scheduler

        c = self.config
        name = "constant_with_warmup" if c.lr_scheduler == "constant" and c.lr_warmup_steps > 0 else c.lr_scheduler
        opt = getattr(self.optimizer, "optimizer", self.optimizer)  # accelerate's wrapper keeps the torch optimizer
        return get_scheduler(name, opt, num_warmup_steps=c.lr_warmup_steps, num_training_steps=c.max_steps)

    def set_max_steps(self, max_steps: int) -> None:
        """Change ``max_steps`` before training starts (the lr schedule's length follows)."""
        if self.step:
            raise RuntimeError("set_max_steps is only possible before the first step")
        self.config.max_steps = int(max_steps)
        _validate(self.config)
        for g in getattr(self.optimizer, "optimizer", self.optimizer).param_groups:
            g["lr"] = g.get("initial_lr", g["lr"])
        self.lr_scheduler = self._make_lr_scheduler()

    def save_final(self, name: str = "final", info: dict | None = None) -> Path | None:
        """``final/`` (or ``name/``): the LoRA (``gen.save_lora``, peft format) or the trainable weights as
        safetensors; EMA weights when EMA is on; ``info`` as ``NAME.json`` beside them. Written to a temporary
        directory and renamed, so a crash never leaves a half-written one."""
        if not self.accelerator.is_main_process:
            return None
        from safetensors.torch import save_file

        out, tmp, old = (self.run_dir / name, self.run_dir / f".{name}.tmp", self.run_dir / f".{name}.old")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        with self._ema_weights():
            if not self.trains_generator:
                self.method.save_pretrained(tmp)
            elif self.config.lora_rank > 0 and hasattr(self.gen, "save_lora"):
                self.gen.save_lora(str(tmp))
            else:
                save_file(self.trainable_state(), str(tmp / "trainable.safetensors"))
        if info is not None:
            (tmp / f"{name}.json").write_text(json.dumps(info, indent=1))
        _fsync_tree(tmp)
        shutil.rmtree(old, ignore_errors=True)
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
        return out

    def _main_flag(self, flag: bool) -> bool:
        """Process 0's ``flag`` on every process (a decision taken on process 0's evaluation)."""
        return bool(self._main_value(bool(flag)))

    def _main_value(self, value: Any) -> Any:
        """Process 0's ``value`` (a small picklable object) on every process."""
        if self.accelerator.num_processes == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def train(config: TrainConfig, method_config: Any, generator=None, reward=None) -> dict[str, Any]:
    """Convenience: build a :class:`Trainer` and run it."""
    return Trainer(config, method_config, generator=generator, reward=reward).train()
