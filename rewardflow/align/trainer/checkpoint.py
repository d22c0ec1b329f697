"""Checkpoints: atomic writes with a verified manifest, finding the newest intact one, exact resume.

A checkpoint ``checkpoints/step_N/`` is written to a temporary directory, every file is listed with its size and
sha256 in ``manifest.json`` (written last), the directory is fsynced and renamed; ``resume=auto`` picks the newest
checkpoint whose manifest verifies (a corrupt one is skipped with a warning). It holds the trainable weights, the
optimizer, lr schedule, EMA, every process's RNG state and method state, the step and the sample count, so a
resumed run continues exactly as the uninterrupted one. ``final/`` and ``best/`` are written the same way.
A failed write (disk full, ...) removes the partial directory, keeps the earlier checkpoints and raises
:class:`CheckpointWriteError` naming the path (docs/usage/robustness.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import safetensors.torch
import torch
import yaml

from rewardflow.align.trainer.rng import reseed_process, rng_state, set_rng_state
from rewardflow.align.trainer.writes import CheckpointWriteError, fsync_dir, fsync_tree, write_error
from rewardflow.io.paths import respect_umask


# ---------------------------------------------------------------------------------------------------- checkpoints

MANIFEST = "manifest.json"  # written last inside a checkpoint: every other file with its size and sha256
CHECKPOINT_FILES = ("trainable.safetensors", "state.pt", "trainer.json")
RUN_LOGS = ("metrics.jsonl", "eval.jsonl", "hacking.jsonl")  # one record per step: trimmed on every (re)start
# beside them, the weights in a form diffusers loads (CheckpointMixin.write_loadable_weights): the LoRA file, or the
# fine-tuned denoiser folder (unet/ or transformer/)
LOADABLE_NAME = "pytorch_lora_weights.safetensors"
# a sharded checkpoint (strategy fsdp / zero2 / zero3) holds the weights and optimizer state in sharded/, one or more
# files per process (written by every process, then listed in the manifest by process 0)
SHARDED_CHECKPOINT_FILES = ("state.pt", "trainer.json")
SHARDED_DIR = "sharded"


def _sha256(path: Path) -> str:
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
    sharded = any(k.startswith(SHARDED_DIR + "/") for k in listed)
    for need in SHARDED_CHECKPOINT_FILES if sharded else CHECKPOINT_FILES:
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


def trim_jsonl(path: Path, last_step: int) -> int:
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


def read_jsonl(path: Path) -> list[dict]:
    """The records (JSON objects with a ``step``) of a run log; other lines are left out."""
    out = []
    if path.is_file():
        for ln in path.read_text().splitlines():
            try:
                rec = json.loads(ln)
            except ValueError:
                continue
            if isinstance(rec, dict) and "step" in rec:
                out.append(rec)
    return out


# trainer keys a resumed run may change: the run's length, where and how often it records, checkpoints and
# evaluates, and the devices; every other key changes what the rest of the run computes
RESUME_FREE_KEYS = ("max_steps", "output_dir", "resume", "resume_allow_changes", "device", "threads", "report_to",
                    "run_name", "log_every", "save_every", "keep_checkpoints", "eval_every", "eval_at_start",
                    "collective_timeout_s")


def _jsonable(v):
    return json.loads(json.dumps(v, default=list))


def saved_run_config(ckpt: Path) -> dict | None:
    """The resolved config a checkpoint was written with (``trainer.json``; for checkpoints written before it was
    stored there, the run directory's ``config.yaml``), or None when neither has it."""
    meta = json.loads((ckpt / "trainer.json").read_text()) if (ckpt / "trainer.json").is_file() else {}
    if isinstance(meta.get("config"), dict):
        return meta["config"]
    cfg = ckpt.parent.parent / "config.yaml"
    if cfg.is_file():
        data = yaml.safe_load(cfg.read_text())
        return data if isinstance(data, dict) else None
    return None


def config_changes(saved: dict | None, current: dict) -> dict[str, tuple]:
    """``{key: (checkpoint's value, current value)}`` for the keys that differ, except :data:`RESUME_FREE_KEYS`."""
    if not saved:
        return {}
    cur = _jsonable(current)
    return {k: (saved.get(k), v) for k, v in cur.items()
            if k not in RESUME_FREE_KEYS and k in saved and _jsonable(saved[k]) != v}


class CheckpointMixin:
    """The :class:`~rewardflow.align.trainer.loop.Trainer`'s checkpoint methods (it provides ``config``,
    ``accelerator``, ``method``, ``params``, ``param_names``, ``optimizer``, ``lr_scheduler``, ``ema``, the RNGs,
    ``step``, ``samples_seen``, ``run_dir``, ``ckpt_dir``, ``sharding`` (:mod:`~rewardflow.align.trainer.sharding`)
    and ``_main_value``)."""

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().contiguous().clone() for n, p in zip(self.param_names, self.params)}

    def load_trainable_state(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        fix = (f"it was saved with a different lora_rank / lora_targets / model (this run: lora_rank="
               f"{self.config.lora_rank}); resume with the settings it was saved with, or start over with "
               "resume=never or another output_dir")
        missing = [n for n in self.param_names if n not in state]
        if missing:
            raise ValueError(f"{source} lacks {len(missing)} trainable tensors (e.g. {missing[0]}): {fix}")
        extra = sorted(set(state) - set(self.param_names))
        if extra:
            raise ValueError(f"{source} has {len(extra)} tensors this run does not train (e.g. {extra[0]}): {fix}")
        for n, p in zip(self.param_names, self.params):
            if tuple(state[n].shape) != tuple(p.shape):
                raise ValueError(f"{source}: tensor {n} has shape {tuple(state[n].shape)} but this run's has "
                                 f"{tuple(p.shape)}: {fix}")
        with torch.no_grad():
            for n, p in zip(self.param_names, self.params):
                p.copy_(state[n].to(p.device, p.dtype))

    def save_checkpoint(self) -> Path | None:
        """Atomically write ``checkpoints/step_{N}``: every file into a temporary directory, ``manifest.json``
        (sizes and sha256 of the others) last, fsync, rename. A failed write (disk full, ...) removes the temporary
        directory, keeps the earlier checkpoints and raises :class:`CheckpointWriteError` naming the path, on every
        process (process 0 writes; its outcome is broadcast)."""
        acc = self.accelerator
        if self.reporter is not None:
            self.reporter.flush()  # the records of the steps this checkpoint holds are never redone: keep them
        acc.wait_for_everyone()
        # every process's RNG (its prompts and noise) and method state (e.g. its rollout cache), so that each
        # process continues exactly
        method_state = self.method.state_dict()
        shared = set(self.method.shared_state_keys)
        mine = {"rng": rng_state({"prompt": self.prompt_rng, "sample": self.sample_rng}),
                "method": {k: v for k, v in method_state.items() if k not in shared}}
        if acc.num_processes > 1:
            per_process: list = [None] * acc.num_processes
            torch.distributed.all_gather_object(per_process, mine)
        else:
            per_process = [mine]
        # sharded strategies: every process writes its shard into a staging directory first (None for ddp)
        staged = self.sharding.stage_checkpoint(self.ckpt_dir, self.step)
        # and the LoRA beside them in diffusers' layout, gathered on process 0 (a sharded full fine-tuning keeps the
        # shards only: gathering the whole denoiser at every checkpoint would cost a full copy; final/ and best/
        # hold its folder)
        loadable = (self.sharding.full_trainable_state(self.param_names, self.params)
                    if staged is not None and self.trains_generator and self._saves_lora() else None)
        err, final = None, None
        if acc.is_main_process:
            try:
                final = self._write_checkpoint(mine, method_state, per_process, staged, loadable)
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
        self.checkpointed_step = self.step
        return final

    def _write_checkpoint(self, mine: dict, method_state: dict, per_process: list, staged: Path | None = None,
                          loadable: dict | None = None) -> Path:
        """Process 0's part of :meth:`save_checkpoint`: the atomic write and the pruning."""
        final = self.ckpt_dir / f"step_{self.step:07d}"
        tmp = self.ckpt_dir / f".tmp_step_{self.step:07d}"
        old = self.ckpt_dir / f".old_step_{self.step:07d}"
        for stale in [*self.ckpt_dir.glob(".tmp_step_*"), *self.ckpt_dir.glob(".old_step_*")]:
            shutil.rmtree(stale, ignore_errors=True)  # leftovers of a killed save: never candidates for resume
        cur = tmp
        try:
            tmp.mkdir(parents=True)
            if staged is not None:  # the weights and optimizer state, already written by every process
                cur = tmp / SHARDED_DIR
                os.replace(staged, cur)
            else:
                cur = tmp / "trainable.safetensors"
                safetensors.torch.save_file(self.trainable_state(), str(cur))
            cur = tmp / "state.pt"
            torch.save({"optimizer": None if staged is not None else self.optimizer.state_dict(),
                        "lr_scheduler": self.lr_scheduler.state_dict(),
                        "ema": None if self.ema is None else self.ema.state_dict(),
                        "rng": mine["rng"], "method": method_state,  # process 0's (older readers, shared keys)
                        "per_process": per_process}, cur)
            cur = tmp / "trainer.json"
            cur.write_text(json.dumps({"step": self.step, "samples_seen": self.samples_seen,
                                       "method": self.config.method, "config": _jsonable(self.resolved_config()),
                                       "strategy": self.config.strategy,
                                       "num_processes": self.accelerator.num_processes}))
            if staged is None or loadable is not None:  # sharded full fine-tuning: shards only (save_checkpoint)
                cur = tmp / (LOADABLE_NAME if self._saves_lora() else getattr(self.gen, "lora_component", "unet"))
                self.write_loadable_weights(tmp, loadable)
            cur = tmp / MANIFEST
            write_manifest(tmp)
            cur = tmp
            respect_umask(tmp)
            fsync_tree(tmp)
            cur = final
            if final.exists():  # the same step written again (a resumed run redoing it): swap, then delete
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
            os.replace(tmp, final)
            fsync_dir(self.ckpt_dir)
        except Exception as e:  # noqa: BLE001 - a full disk raises RuntimeError (torch) / SafetensorError too
            shutil.rmtree(tmp, ignore_errors=True)
            if staged is not None:
                shutil.rmtree(staged, ignore_errors=True)
            if old.exists() and not final.exists():
                os.replace(old, final)
            kept = sorted(p.name for p in self.ckpt_dir.glob("step_*"))
            raise write_error(e, f"the checkpoint of step {self.step}", cur,
                              "The partial checkpoint was removed; the earlier checkpoints are intact "
                              f"({', '.join(kept) if kept else 'none yet'} in {self.ckpt_dir}).") from e
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
        path = Path(path)
        if not (path / "trainer.json").is_file():
            raise FileNotFoundError(f"{path} is not a complete rewardflow checkpoint (trainer.json missing); "
                                    "use resume=auto to pick the newest complete one")
        problem = verify_checkpoint(path)
        if problem is not None and (path / MANIFEST).is_file():
            raise ValueError(f"checkpoint {path} is corrupt: {problem}. Use resume=auto to fall back to the newest "
                             "intact checkpoint, or resume=PATH with an older one")
        if problem is not None:
            warnings.warn(f"[rewardflow] checkpoint {path} has no {MANIFEST}; loading it unverified", RuntimeWarning,
                          stacklevel=2)
        meta = json.loads((path / "trainer.json").read_text())
        if meta.get("method") != self.config.method:
            raise ValueError(f"checkpoint {path} was written by method {meta.get('method')!r}, "
                             f"not {self.config.method!r}")
        saved = meta.get("strategy", "ddp")
        if saved != self.config.strategy:
            raise ValueError(f"checkpoint {path} was written with strategy={saved}; resume it with strategy={saved} "
                             f"(this run has strategy={self.config.strategy}; checkpoints do not convert between "
                             "strategies)")
        if (path / SHARDED_DIR).is_dir():
            self.sharding.load_sharded(path / SHARDED_DIR, meta)
        else:
            self.load_trainable_state(safetensors.torch.load_file(str(path / "trainable.safetensors")),
                                      source=f"checkpoint {path}")
        st = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        if st["optimizer"] is not None:
            self.optimizer.load_state_dict(st["optimizer"])
        self.lr_scheduler.load_state_dict(st["lr_scheduler"])
        if self.ema is not None and st["ema"] is not None:
            self.ema.load_state_dict(st["ema"])
        self.step, self.samples_seen = int(meta["step"]), int(meta["samples_seen"])
        self._restore_process_state(st)

    def _restore_process_state(self, st: dict) -> None:
        """Each process takes its own saved RNG states and method state (exact continuation). A checkpoint written
        with another number of processes (or by an older rewardflow, process 0's states only) cannot be continued
        exactly: every process takes process 0's method state, process 0 its RNG states, and the others reseed
        deterministically from (seed, rank, step), so that no two processes draw the same prompts and noise."""
        acc, gens = self.accelerator, {"prompt": self.prompt_rng, "sample": self.sample_rng}
        per = st.get("per_process")
        if per is not None and len(per) == acc.num_processes:
            set_rng_state(per[acc.process_index]["rng"], gens)
            shared = {k: v for k, v in st["method"].items() if k in set(self.method.shared_state_keys)}
            self.method.load_state_dict({**per[acc.process_index]["method"], **shared})
            return
        self.method.load_state_dict(st["method"])
        if acc.process_index == 0:
            set_rng_state(st["rng"], gens)
        else:
            reseed_process(self.config.seed, acc.process_index, self.step, self.prompt_rng, self.sample_rng)
        if acc.is_main_process:
            n = len(per) if per is not None else "an unknown number of"
            print(f"[rewardflow] the checkpoint was written by {n} processes, this run has {acc.num_processes}: "
                  "process 0 continues its saved random streams, the others reseed (the continuation is "
                  "deterministic but not the uninterrupted run's)", flush=True)

    def _optimizer_from_config(self) -> None:
        """After a resume with allowed changes: the optimizer's hyperparameters and the lr schedule's base value
        come from this run's config (the loaded optimizer state carries the old ones), and the current lr is the
        schedule's value at the restored step."""
        c, opt, sched = self.config, getattr(self.optimizer, "optimizer", self.optimizer), self.lr_scheduler
        for g in opt.param_groups:
            g["initial_lr"], g["weight_decay"] = c.lr, c.weight_decay
            if "betas" in g:
                g["betas"], g["eps"] = (c.adam_beta1, c.adam_beta2), c.adam_eps
        sched.base_lrs = [c.lr] * len(opt.param_groups)
        lams = getattr(sched, "lr_lambdas", None)
        if lams is not None:  # diffusers' schedules are LambdaLR
            for g, lam in zip(opt.param_groups, lams):
                g["lr"] = c.lr * lam(sched.last_epoch)
            sched._last_lr = [g["lr"] for g in opt.param_groups]

    def resolved_config(self) -> dict:
        """The trainer keys and the method's keys as this run uses them (tuples as lists)."""
        resolved = {**dataclasses.asdict(self.config), **dataclasses.asdict(self.method_config)}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in resolved.items()}

    def check_resume_config(self, path: Path) -> dict[str, tuple]:
        """Keys this run sets differently from the run that wrote checkpoint ``path``: refused (ValueError naming
        them) unless ``resume_allow_changes``; then returned, to be recorded."""
        changes = config_changes(saved_run_config(path), self.resolved_config())
        if changes and not self.config.resume_allow_changes:
            listed = ", ".join(f"{k} ({old!r} -> {new!r})" for k, (old, new) in changes.items())
            raise ValueError(f"resume: {self.run_dir} was trained with other values of {', '.join(changes)}: "
                             f"{listed} (checkpoint {path.name}). Resuming with changed keys would continue a run "
                             "whose records say otherwise: set resume_allow_changes=true to continue with the new "
                             f"values (recorded in {self.run_dir / 'config_changes.jsonl'}), put the old values back, "
                             "or start a new run (another output_dir, or resume=never)")
        return changes

    def maybe_resume(self) -> bool:
        """Resume as ``config.resume`` says, then trim every run log to the resumed step (a fresh start: to
        nothing), so that each step has exactly one record however often the run was restarted. ``resume=auto``
        with checkpoints that are all damaged stops (it does not silently start over); ``resume=never`` starts over,
        removing the earlier run's checkpoints."""
        r, main = self.config.resume, self.accelerator.is_main_process
        path = None
        if r == "auto":
            path = self.latest_checkpoint()
            if path is None:
                self._refuse_all_damaged()
        elif r == "never":
            old = sorted(self.ckpt_dir.glob("step_*")) if self.ckpt_dir.is_dir() else []
            if old and main:
                for p in old:
                    shutil.rmtree(p, ignore_errors=True)
                print(f"[rewardflow] resume=never: starting over; removed the earlier run's checkpoints "
                      f"({', '.join(p.name for p in old)}) and records in {self.run_dir}", flush=True)
        else:
            path = Path(r)
        if path is not None:
            changes = self.check_resume_config(path)
            self.load_checkpoint(path)
            if changes:
                self._optimizer_from_config()
            if changes and main:
                with open(self.run_dir / "config_changes.jsonl", "a") as fh:
                    fh.write(json.dumps({"step": self.step, "checkpoint": str(path),
                                         "changes": {k: {"before": old, "after": new}
                                                     for k, (old, new) in changes.items()}}) + "\n")
                print(f"[rewardflow] resume_allow_changes: continuing from step {self.step} with "
                      + ", ".join(f"{k}={new!r} (was {old!r})" for k, (old, new) in changes.items())
                      + f"; recorded in {self.run_dir / 'config_changes.jsonl'}", flush=True)
        self.checkpointed_step = self.step if path is not None else None
        if main:  # the steps after the checkpoint (all of them, without one) are redone: drop their old records
            for f in RUN_LOGS:
                trim_jsonl(self.run_dir / f, self.step if path is not None else -1)
        if path is not None:
            print(f"[rewardflow] resumed from {path} at step {self.step}", flush=True)
        return path is not None

    def _refuse_all_damaged(self) -> None:
        damaged = [(p.name, verify_checkpoint(p)) for p in sorted(self.ckpt_dir.glob("step_*")) if p.is_dir()]
        if damaged:
            detail = "; ".join(f"{n}: {why}" for n, why in damaged[-3:])
            raise ValueError(f"every checkpoint in {self.ckpt_dir} is damaged ({detail}), so resume=auto has nothing "
                             "to continue from. Rerun with resume=never to start over (this deletes them), or "
                             "resume=PATH to load one that you know is complete")

    def _save_everywhere(self, name: str, save):
        """Run ``save()`` (a write of process 0's: ``best/``, ``final/``) and stop every process with the same
        :class:`CheckpointWriteError` when it fails, instead of leaving the others in the next collective."""
        err, out = None, None
        try:
            out = save()
        except CheckpointWriteError as e:
            err = e
        failed = self._main_value(None if err is None else str(err))
        if err is not None:
            raise err
        if failed is not None:
            raise CheckpointWriteError(f"process 0 failed to write {name}/: {failed}")
        return out

    def _saves_lora(self) -> bool:
        return self.config.lora_rank > 0 and hasattr(self.gen, "save_lora")

    def write_loadable_weights(self, out: Path, full: dict[str, torch.Tensor] | None = None) -> None:
        """The trained generator weights (EMA applied when EMA is on) in the form diffusers loads, into ``out``:
        ``pytorch_lora_weights.safetensors`` for a LoRA (``pipe.load_lora_weights(out)``), or the fine-tuned
        denoiser folder ``unet/`` / ``transformer/`` written by ``save_pretrained`` for full fine-tuning
        (``UNet2DConditionModel.from_pretrained(out / "unet")``). ``rewardflow sample --lora out`` reads either.
        Nothing for a method that trains its own module. ``full``: the trainable weights gathered from the shards
        of a sharded strategy (the module itself holds only this process's shard)."""
        if not self.trains_generator:
            return
        given = {} if full is None else {"state_dict": full}
        with self._ema_weights():
            if self._saves_lora():
                self.gen.save_lora(str(out), **given)
            elif hasattr(self.gen, "save_denoiser"):
                self.gen.save_denoiser(str(out), **given)

    def save_final(self, name: str = "final", info: dict | None = None) -> Path | None:
        """``final/`` (or ``name/``): the LoRA (``pytorch_lora_weights.safetensors``, diffusers' layout), or for full
        fine-tuning the trainable weights as safetensors plus the denoiser folder written by ``save_pretrained``
        (:meth:`write_loadable_weights`); a method's own module through its ``save_pretrained``; EMA weights when
        EMA is on; ``info`` as ``NAME.json`` beside them. Written to a temporary directory and renamed, so a crash
        never leaves a half-written one. With a sharded strategy the weights are gathered on process 0 first."""
        # sharded strategies: the whole trainable weights, gathered on process 0 (every process takes part)
        full = self.sharding.full_trainable_state(self.param_names, self.params) if self.trains_generator else None
        if not self.accelerator.is_main_process:
            return None
        out, tmp, old = (self.run_dir / name, self.run_dir / f".{name}.tmp", self.run_dir / f".{name}.old")
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            with self._ema_weights():
                if not self.trains_generator:
                    self.method.save_pretrained(tmp)
                elif not self._saves_lora():
                    safetensors.torch.save_file(self.trainable_state() if full is None else full,
                                                str(tmp / "trainable.safetensors"))
            self.write_loadable_weights(tmp, full)
            if info is not None:
                (tmp / f"{name}.json").write_text(json.dumps(info, indent=1))
            respect_umask(tmp)
            fsync_tree(tmp)
            shutil.rmtree(old, ignore_errors=True)
            if out.exists():
                os.replace(out, old)
            os.replace(tmp, out)
        except Exception as e:  # noqa: BLE001 - any failed write (a full disk is not always an OSError)
            shutil.rmtree(tmp, ignore_errors=True)
            if old.exists() and not out.exists():
                os.replace(old, out)
            kept = f"The partial {name}/ was removed" + (f"; the earlier {out} is intact." if out.exists() else ".")
            raise write_error(e, f"{name}/", tmp, kept + f" The checkpoints in {self.ckpt_dir} are intact.") from e
        shutil.rmtree(old, ignore_errors=True)
        return out

