"""The training loop: build the generator, reward and method from a config, then collect -> loss -> step, with
evaluation, checkpoints and records (the one trainer every method shares; see the package docstring)."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from rewardflow import runtime
from rewardflow.align.method import MethodContext, get_method
from rewardflow.align.trainer.checkpoint import CheckpointMixin, read_jsonl
from rewardflow.align.trainer.config import TrainConfig, apply_model_defaults
from rewardflow.align.trainer.distributed import (
    broadcast_from_main,
    make_accelerator,
    max_over_processes,
    per_process_batch_size,
)
from rewardflow.align.trainer.evaluation import EvaluationMixin
from rewardflow.align.trainer.fsdp import FSDP
from rewardflow.align.trainer.reporting import (
    Reporter,
    plot_reward_curve,
)
from rewardflow.align.trainer.rng import seed_process
from rewardflow.align.trainer.selection import BestTracker
from rewardflow.align.trainer.sharding import (
    SHARDED_WHAT,
    DataParallel,
    check_method,
    describe_memory,
    resolve_strategy,
)
from rewardflow.align.trainer.signals import GracefulStop, TrainingInterrupted
from rewardflow.align.trainer.zero import ZeRO
from rewardflow.eval.hooks import check_eval_hooks
from rewardflow.eval.monitor import RewardHackingMonitor
from rewardflow.io.progress import progress
from rewardflow.io.prompts import load_prompt_source
from rewardflow.pipelines.lora import upcast_trainable
from rewardflow.pipelines.options import GeneratorOptions, load_generator_with_options
from rewardflow.rewards.combine import (
    MissingWeightsError,
    build_reward,
    parse_reward_spec,
)


def generator_options(c: TrainConfig, device=None) -> GeneratorOptions:
    """The generator options of a training config (gradient checkpointing is switched on by the trainer, after
    LoRA is attached)."""
    return GeneratorOptions(height=c.height, width=c.width, num_frames=c.num_frames, dtype=c.dtype,
                            attention=c.attention, vae_slicing=c.vae_slicing, vae_tiling=c.vae_tiling,
                            max_sequence_length=c.max_sequence_length, guidance_scale=c.guidance_scale,
                            device=None if device is None else str(device))


class Trainer(EvaluationMixin, CheckpointMixin):
    """Build everything from a (TrainConfig, method config) pair and run :meth:`train`.

    ``generator`` / ``reward`` may be passed in (tests, notebooks); otherwise they are loaded from the config.
    """

    def __init__(self, config: TrainConfig, method_config: Any, generator=None, reward=None):
        self.config = c = config
        c.validate()
        self.cpu = runtime.apply_threads(c.threads)  # the config key; --threads on the command line wins
        if c.threads and self.cpu.get("threads_from") == "config key threads":
            print(runtime.describe(self.cpu), flush=True)
        self.method_config = method_config
        self.accelerator = make_accelerator(c)
        acc = self.accelerator
        # an accelerate config selecting FSDP / DeepSpeed maps onto `strategy` (sharding.py, fsdp.py, zero.py)
        c, launcher_blocks = resolve_strategy(c)
        self.config = c
        strategies = {"ddp": DataParallel, "fsdp": FSDP, "zero2": ZeRO, "zero3": ZeRO}
        self.sharding = strategies[c.strategy](c, acc, launcher_blocks)
        self.method_cls = get_method(c.method)
        check_method(c.strategy, self.method_cls, method_config)
        if c.global_batch_size:
            self.config = c = dataclasses.replace(
                c, batch_size=per_process_batch_size(c.global_batch_size, acc.num_processes, c.grad_accum))
        self.run_dir = Path(c.output_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        if acc.is_main_process:
            (self.run_dir / "samples").mkdir(parents=True, exist_ok=True)
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)

        self.prompt_rng, self.sample_rng = seed_process(c.seed, acc.process_index)

        # -- generator, trainable weights, reference
        if generator is None:
            if not c.model:
                raise ValueError("the config needs `model:` (a diffusers pipeline directory, a hub id, or an "
                                 "embedded model such as toy)")
            generator = load_generator_with_options(c.model, c.adapter, generator_options(c, device=acc.device))
        self.gen = generator
        self.config = c = apply_model_defaults(c, getattr(type(generator), "run_defaults", {}))
        self.gen.guidance_scale = c.guidance_scale
        if self.gen.device != acc.device:
            self._move_generator(acc.device)
        self.trains_generator = bool(self.method_cls.trains_generator)
        if self.trains_generator:
            if c.lora_rank > 0 and c.init_lora:  # continue an existing LoRA (diffusers or kohya / A1111 file)
                self.gen.load_lora(c.init_lora, trainable=True)
            elif c.lora_rank > 0:
                self.gen.add_lora(rank=c.lora_rank, alpha=c.lora_alpha or None,
                                  target_modules=c.lora_targets or None)
            else:
                self.gen.denoiser.requires_grad_(True)
                upcast_trainable(self.gen.denoiser)  # fp32 master weights over fp16 / bf16 frozen parts
            if c.gradient_checkpointing:
                self.gen.enable_gradient_checkpointing()
            self.gen.denoiser.train()
            if acc.num_processes > 1:  # LoRA init drew from a per-process seed: start every process from rank 0's
                broadcast_from_main([p.data for p in self.gen.denoiser.parameters() if p.requires_grad], acc)
        else:  # the method trains its own module (e.g. a latent reward head); the generator stays frozen
            self.gen.denoiser.requires_grad_(False).eval()

        # -- reward
        if reward is None and c.reward:
            reward = self._build_reward(c.reward, c.reward_kwargs)
        self.reward = reward
        if self.reward is not None:
            self.reward.to(acc.device).requires_grad_(False).eval()

        # -- method
        self._log_buffer: dict[str, list[float]] = {}
        self.ctx = MethodContext(generator=self.gen, reward=self.reward, device=acc.device, rng=self.sample_rng,
                                 sample_steps=c.sample_steps, batch_size=c.batch_size, grad_accum=c.grad_accum,
                                 process_index=acc.process_index, num_processes=acc.num_processes,
                                 gather=self._gather, log=self._ctx_log)
        self.method = self.method_cls(method_config, self.ctx)
        if self.trains_generator and c.lora_rank == 0 and self.method.uses_reference:
            # full fine-tuning: the reference is a frozen copy of the initial weights; taken after the method is
            # built because some methods need it only for some settings (DRaFT with kl_weight > 0)
            self.gen.snapshot_reference()
        module = self.gen.denoiser if self.trains_generator else self.method.trainable_module()
        if module is None:
            raise TypeError(f"method {c.method!r} sets trains_generator=False but trainable_module() returned None")
        module.train()
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.param_names = [n for n, p in module.named_parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("no trainable parameters (LoRA targets matched nothing?); set lora_targets")
        if acc.num_processes > 1 and not self.trains_generator:  # the method's own module, randomly initialized
            broadcast_from_main([p.data for p in self.params], acc)
        self.params_before = sum(p.numel() for p in self.params)
        if self.trains_generator:  # fsdp replaces the parameters by their shards
            self.sharding.shard(self.gen)
            self.params = [p for p in module.parameters() if p.requires_grad]
        else:
            self.sharding.modules = [module]

        # -- optimizer, schedule, EMA
        if c.optimizer in ("adamw", "adam"):
            opt_cls = torch.optim.AdamW if c.optimizer == "adamw" else torch.optim.Adam
            self.optimizer = opt_cls(self.params, lr=c.lr, betas=(c.adam_beta1, c.adam_beta2), eps=c.adam_eps,
                                     weight_decay=c.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(self.params, lr=c.lr, weight_decay=c.weight_decay)
        self.lr_scheduler = self._make_lr_scheduler()
        self.optimizer = self.sharding.prepare_optimizer(self.gen, self.optimizer)
        self.memory = self.sharding.memory_report(self.params)
        self.ema = None
        if c.ema_decay > 0:
            # lazy: diffusers' training utilities (heavy) are needed only with EMA
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self.params, decay=c.ema_decay)
        self.prompts = load_prompt_source(c.prompts)
        self.eval_source = load_prompt_source(c.eval_prompts) if c.eval_prompts else None
        self.eval_hook_names = tuple(dict.fromkeys(
            (self.eval_source.eval_hooks if self.eval_source is not None else ()) + tuple(c.eval_hooks)))
        check_eval_hooks(self.eval_hook_names)
        # held-out rewards: scored at every eval; a RewardHackingMonitor warns when eval_reward rises while one of
        # them falls (eval/monitor.py)
        self.heldout = {n.split("(")[0].strip(): self._build_reward(n, c.reward_kwargs).to(acc.device).eval()
                        for n in c.heldout_rewards}
        self.monitor = None
        if self.heldout and acc.is_main_process:
            self.monitor = RewardHackingMonitor("eval_reward", [f"heldout_{n}" for n in self.heldout],
                                                log_file=self.run_dir / "hacking.jsonl")
        self.step = 0
        self.samples_seen = 0
        self.checkpointed_step: int | None = None  # the step of the last checkpoint written or resumed from
        self.reporter = None

    # ------------------------------------------------------------------ construction helpers
    def _move_generator(self, device) -> None:
        pipe = getattr(self.gen, "pipe", None)
        if pipe is not None:
            pipe.to(device)
        else:
            self.gen.denoiser.to(device)

    @staticmethod
    def _build_reward(spec: str, reward_kwargs: dict | None = None):
        """The reward ``spec`` with the ``reward_kwargs`` of its names; missing weights say which key to set."""
        names = [n for n, _ in parse_reward_spec(spec)]
        try:
            return build_reward(spec, **{n: dict(v) for n, v in (reward_kwargs or {}).items() if n in names})
        except MissingWeightsError as e:
            raise e.with_hint(f"give the file in the config: reward_kwargs: {{{e.reward}: {{path: PATH}}}} (or "
                              f"'reward_kwargs={{{e.reward}: {{path: PATH}}}}' on the command line)") from None

    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        return self.accelerator.gather(t) if self.accelerator.num_processes > 1 else t

    def _ctx_log(self, d: dict[str, float]) -> None:
        for k, v in d.items():
            v = float(v.item() if torch.is_tensor(v) else v)
            self._log_buffer.setdefault(k, []).append(v)

    def effective_batch(self) -> dict[str, int]:
        c, acc = self.config, self.accelerator
        per_prompt = self.method.samples_per_prompt
        prompts = c.batch_size * c.grad_accum * acc.num_processes
        # a method that reuses each rollout for K optimizer steps (updates_per_rollout) draws 1/K new samples per step
        reuse = self.method.updates_per_rollout
        return {"batch_size": c.batch_size, "grad_accum": c.grad_accum, "num_processes": acc.num_processes,
                "samples_per_prompt": per_prompt, "prompts_per_step": prompts, "samples_per_step": prompts * per_prompt,
                "updates_per_rollout": reuse, "new_samples_per_step": prompts * per_prompt / reuse}

    def describe(self) -> str:
        e = self.effective_batch()
        return (f"[rewardflow] method={self.config.method} trainable parameters={self.params_before:,} "
                f"({self._trainable_kind()})\n"
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
                   "prompts, gradients are averaged over processes" if e["num_processes"] > 1 else "")
                + (f"\n[rewardflow] strategy={self.config.strategy}: {SHARDED_WHAT[self.config.strategy]}"
                   if self.config.strategy != "ddp" else ""))

    def _trainable_kind(self) -> str:
        c = self.config
        if not c.lora_rank:
            return "full fine-tuning"
        if c.init_lora:
            cfg = getattr(self.gen.denoiser, "peft_config", {}).get("default")
            return f"LoRA from {c.init_lora}" + (f", r={cfg.r} alpha={cfg.lora_alpha:g}" if cfg is not None else "")
        return f"LoRA r={c.lora_rank}"

    # ------------------------------------------------------------------ one optimizer step
    def train_step(self) -> dict[str, float]:
        """Collect, accumulate the loss over micro-batches, guard against non-finite values, step."""
        c, acc, m, sh = self.config, self.accelerator, self.method, self.sharding
        self._log_buffer = {}
        self.optimizer.zero_grad(set_to_none=True)
        sh.begin_step()
        losses, diags, finite = [], {}, True
        batches = []
        for _ in range(c.grad_accum):
            prompts = self.prompts.sample(c.batch_size, self.prompt_rng)
            with torch.set_grad_enabled(m.collect_needs_grad), acc.autocast():
                collected = m.collect(prompts, self.step)
            batches.append(collected)
            # a method that re-serves the same rollout (updates_per_rollout > 1) drew no new samples
            if m.collected_new_samples():
                self.samples_seen += c.batch_size * m.samples_per_prompt * acc.num_processes
        micro = [mb for collected in batches for mb in collected]
        n_micro = len(micro)
        # sharded strategies run the denoiser in lockstep: pad with weight-0 replays, or skip on every process
        pad, lockstep_skip = sh.lockstep_plan(n_micro)
        if lockstep_skip:
            micro, pad = [], 0
        for i, mb in enumerate(micro + micro[-1:] * pad):
            replay = i >= n_micro
            log_before = {k: list(v) for k, v in self._log_buffer.items()} if replay else None
            with acc.autocast():
                loss, d = m.loss(mb, self.step)
            if replay:  # only keeps the collectives in step: no gradient, no record
                self._log_buffer = log_before
                if not torch.isfinite(loss.detach()).all():
                    sh.backward_nonfinite(loss)
                elif loss.requires_grad:
                    sh.backward(loss * 0.0)
                continue
            if not torch.isfinite(loss.detach()).all():
                finite = False
                losses.append(float("nan"))
                sh.backward_nonfinite(loss)
                continue
            if loss.requires_grad:
                sh.backward(loss / n_micro)
            losses.append(float(loss.detach()))
            for k, v in d.items():
                diags.setdefault(k, []).append(float(v.item() if torch.is_tensor(v) else v))
        has_grad = sh.has_grad(self.params)
        loss_sum, n_finite = sum(x for x in losses if math.isfinite(x)), sum(math.isfinite(x) for x in losses)
        if acc.num_processes > 1:
            # one small all-reduce so that every process takes the same decision (step or skip) and logs the loss
            # averaged over all processes
            flags = acc.reduce(torch.tensor([float(not finite), float(has_grad), loss_sum, float(n_finite)],
                                            dtype=torch.float64, device=acc.device), reduction="sum").cpu()
            finite, has_grad = bool(flags[0] == 0), bool(flags[1] > 0)
            loss_sum, n_finite = float(flags[2]), int(flags[3])
        # ddp averages the gradients over processes here (the denoiser is deliberately not DDP-wrapped: each process
        # divided its loss by its number of micro-batches, so the mean is the gradient of the mean loss); fsdp and
        # zero reduced them in backward
        gnorm, stepped = sh.step(self.params, c.grad_clip, skip=not finite or not has_grad, has_grad=has_grad)
        skipped = not stepped
        reasons = [(not finite, "non-finite loss"), (bool(lockstep_skip), lockstep_skip),
                   (not math.isfinite(gnorm), "non-finite gradient"), (not has_grad, "no gradient")]
        reason = next((r for cond, r in reasons if cond), "skipped by the optimizer")
        if stepped:
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

    # ------------------------------------------------------------------ the loop
    def train(self) -> dict[str, Any]:
        """Run to ``max_steps`` (resuming as ``config.resume`` says). Every step has exactly one record in each run
        log however often the run is killed and restarted: a (re)start trims the logs to the step it continues
        from, and an evaluation at a checkpoint step is written before that checkpoint. SIGTERM / SIGINT finish the
        step, write a checkpoint and raise :class:`TrainingInterrupted` (a second one stops at once)."""
        c, acc = self.config, self.accelerator
        resumed = self.maybe_resume()
        if resumed and self.step >= c.max_steps:  # a finished run started again: nothing to redo, nothing to add
            done = self._finished_summary()
            if done is not None:
                if acc.is_main_process:
                    print(f"[rewardflow] {self.run_dir} already finished at step {self.step} (max_steps="
                          f"{c.max_steps}): nothing to do; raise max_steps to train longer", flush=True)
                return done
            # else: stopped after its last checkpoint; the final evaluation precedes that checkpoint, so it is on
            # record unless a signal stopped the last step (then it is made now; see _run)
        if acc.is_main_process:
            resolved = self.resolved_config()
            e = self.effective_batch()
            head = (f"# launched with num_processes={e['num_processes']} ({acc.distributed_type}): "
                    f"{e['batch_size']} prompts/process x {e['grad_accum']} grad_accum x {e['num_processes']} "
                    f"processes = {e['prompts_per_step']} prompts per optimizer step\n")
            (self.run_dir / "config.yaml").write_text(head + yaml.safe_dump(resolved, sort_keys=False))
        # tensorboard drops the events of the steps this run redoes (all of them on a fresh start)
        self.reporter = Reporter(self.run_dir, c.report_to, {**dataclasses.asdict(c)}, c.run_name,
                                  acc.is_main_process, resume_step=self.step if resumed else -1)
        if acc.is_main_process:
            print(self.describe(), flush=True)
            print(describe_memory(self.memory), flush=True)
        # open for the whole run
        eval_file = open(self.run_dir / "eval.jsonl", "a") if acc.is_main_process else None  # noqa: SIM115
        try:
            with GracefulStop() as stop:
                return self._run(resumed, eval_file, stop)
        finally:
            if eval_file is not None:
                eval_file.close()
            self.reporter.close()

    def _run(self, resumed: bool, eval_file, stop: GracefulStop) -> dict[str, Any]:
        c, acc = self.config, self.accelerator
        history: list[dict] = []
        # the evaluations already on record (kept by the resume): the one at the resumed step is not redone
        recorded = {int(r["step"]): r for r in read_jsonl(self.run_dir / "eval.jsonl")} if resumed else {}
        best = BestTracker(c.best_metric, c.best_mode, c.early_stop_patience) if c.best_metric else None
        if best is not None and resumed and acc.is_main_process:
            best.replay(self.run_dir / "eval.jsonl")
        if self.monitor is not None and resumed:  # peaks and flags as the uninterrupted run had them, no re-logging
            self.monitor.replay(self.run_dir / "eval.jsonl")

        def do_eval(tag=None):  # on every process (process 0 evaluates; a failed best/ write stops them all)
            ev = self.evaluate(tag)
            if ev and self.monitor is not None:
                ev["hacking_warnings"] = len(self.monitor.update(ev["step"], ev))
            if ev:
                self.reporter.log(ev, self.step, file=eval_file)
                history.append(ev)
                print("[rewardflow] eval " + json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                                         for k, v in ev.items()}), flush=True)
            improved = bool(ev) and best is not None and best.update(ev)
            if self.sharding.name != "ddp":  # gathering the weights of best/ takes every process
                improved = self._main_flag(improved)
            self._save_everywhere("best", lambda: self.save_final("best", info={**best.summary(), "eval": ev})
                                  if improved else None)
            return ev

        first = do_eval() if (c.eval_at_start and not resumed) else recorded.get(0, {})
        t0 = time.time()
        # steps done / to do, seconds per step and the ETA (tqdm's), plus loss, reward and samples per second
        bar = progress(total=c.max_steps, initial=self.step, desc=c.method, unit="step",
                       disable=not acc.is_main_process)
        seen0 = self.samples_seen
        skipped = 0
        # an early-stopped run that is run again stays stopped (its evaluations were replayed above)
        stopped_early = bool(best is not None and resumed and self._main_flag(best.should_stop))
        while self.step < c.max_steps and not stopped_early:
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
            post = {k: f"{rec[k]:.4g}" for k in ("loss", "reward_mean") if k in rec}
            post["samples/s"] = f"{(self.samples_seen - seen0) / max(time.time() - t0, 1e-9):.3g}"
            bar.set_postfix(post)
            signum = max_over_processes(stop.signum or 0, self.accelerator) or None
            if c.eval_every and self.step % c.eval_every == 0 and self.step < c.max_steps:
                do_eval()  # before the checkpoint: a kill in between redoes this eval on resume, never loses it
                stopped_early = bool(best is not None and self._main_flag(best.should_stop))
            if signum or (c.save_every and self.step % c.save_every == 0 and self.step < c.max_steps):
                self.save_checkpoint()
            if signum:
                bar.close()
                raise TrainingInterrupted(signum, self.step, self.ckpt_dir / f"step_{self.step:07d}")
            if stopped_early and acc.is_main_process:
                where = ("no finite value yet" if best.value is None else
                         f"best {best.value:.4g} at step {best.step}; weights in {self.run_dir / 'best'}")
                print(f"[rewardflow] early stop at step {self.step}: {c.best_metric} did not improve for "
                      f"{best.bad} evaluations ({where})", flush=True)
        bar.close()
        # the last evaluation (an early stop has just made it; a finished run run again has it on record)
        if stopped_early:
            last = history[-1] if history else recorded.get(max(recorded, default=-1), {})
        elif self._main_flag(self.step in recorded):
            last = recorded.get(self.step, {})
        else:
            last = do_eval()
        if self.checkpointed_step != self.step:
            self.save_checkpoint()
        final_dir = self._save_everywhere("final", self.save_final)
        curve = plot_reward_curve(self.run_dir) if acc.is_main_process else None
        summary = {"run_dir": str(self.run_dir), "steps": self.step, "samples": self.samples_seen,
                   "skipped_steps": skipped, "seconds": round(time.time() - t0, 1), "final": str(final_dir),
                   "reward_curve": None if curve is None else str(curve),
                   "num_processes": acc.num_processes, "strategy": c.strategy, "cpu": runtime.current(),
                   "effective_batch": self.effective_batch(),
                   "memory": {**self.memory,
                              "optimizer_state_bytes_measured": self.sharding.measured_optimizer_bytes()},
                   "before": first, "after": last, "early_stopped": stopped_early}
        if best is not None and acc.is_main_process:
            evals = {**recorded, **{h.get("step"): h for h in history}}
            summary["best"] = {**best.summary(), "dir": str(self.run_dir / "best"), "eval": evals.get(best.step)}
        if acc.is_main_process:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        return summary

    def _finished_summary(self) -> dict | None:
        """``summary.json`` of this run when it was written at the current step (the run completed), else None."""
        f = self.run_dir / "summary.json"
        try:
            summary = json.loads(f.read_text()) if f.is_file() else None
        except ValueError:
            return None
        ok = isinstance(summary, dict) and summary.get("steps") == self.step and (self.run_dir / "final").is_dir()
        return self._main_value(summary if ok else None)

    def _make_lr_scheduler(self):
        from diffusers.optimization import (
            get_scheduler,  # lazy: diffusers is heavy; only the schedule needs it
        )

        c = self.config
        name = "constant_with_warmup" if c.lr_scheduler == "constant" and c.lr_warmup_steps > 0 else c.lr_scheduler
        opt = getattr(self.optimizer, "optimizer", self.optimizer)  # accelerate's wrapper keeps the torch optimizer
        return get_scheduler(name, opt, num_warmup_steps=c.lr_warmup_steps, num_training_steps=c.max_steps)

    def set_max_steps(self, max_steps: int) -> None:
        """Change ``max_steps`` before training starts (the lr schedule's length follows)."""
        if self.step:
            raise RuntimeError("set_max_steps is only possible before the first step")
        self.config.max_steps = int(max_steps)
        self.config.validate()
        for g in getattr(self.optimizer, "optimizer", self.optimizer).param_groups:
            g["lr"] = g.get("initial_lr", g["lr"])
        self.lr_scheduler = self._make_lr_scheduler()

    def _main_flag(self, flag: bool) -> bool:
        """Process 0's ``flag`` on every process (a decision taken on process 0's evaluation)."""
        return bool(self._main_value(bool(flag)))

    def _main_value(self, value: Any) -> Any:
        """Process 0's ``value`` (a small picklable object) on every process."""
        if self.accelerator.num_processes == 1:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


def train(config: TrainConfig, method_config: Any, generator=None, reward=None) -> dict[str, Any]:
    """Convenience: build a :class:`Trainer` and run it."""
    return Trainer(config, method_config, generator=generator, reward=reward).train()

