"""Flow-GRPO: online RL for flow-matching models (Liu et al., arXiv 2505.05470; docs/algorithms.md#flow-grpo).

Implemented from the math of docs/algorithms.md#flow-grpo and the behaviour of the official ``yifan123/flow_grpo`` (``scripts/train_sd3.py``
GRPO/KL block, ``flow_grpo/stat_tracking.py``, ``flow_grpo/diffusers_patch/sd3_sde_with_logprob.py``):

* rollouts: ``group_size`` SDE chains per prompt (docs/algorithms.md#flow-grpo-sde, ``noise_level`` a = 0.7) with per-step log-probs, taken with
  the *denoising reduction* of docs/algorithms.md#flow-grpo-loop — training rollouts use ``rollout_steps`` SDE steps (10 officially) while
  evaluation uses the trainer's ODE ``sample_steps`` (40 officially);
* group-relative advantages ``(r - mean_group) / (std + 1e-4)``, ``std`` global over the step's rewards on every
  process (``global_std``) or per group (docs/algorithms.md#flow-grpo-objective); groups never straddle processes (each process repeats its own
  prompts), the global std is gathered with ``ctx.gather``; groups whose advantages are all 0 are dropped;
* loss per (micro-batch, trained step): PPO clipped surrogate with ``clip(A, -5, 5)`` and eps = 1e-4, plus
  ``beta`` x the per-step Gaussian KL between the policy's and the reference's step means, the reference being the
  base model through ``gen.reference()`` (LoRA disabled). ``kl_form="code"`` is the official code's KL, which
  equals the exact Gaussian KL times the step length sigma_i - sigma_{i+1} (docs/algorithms.md#flow-grpo-kl), so the official betas
  apply unchanged; ``kl_form="exact"`` is the exact per-step KL;
* ``timestep_fraction = 0.99`` trains the first ``int(T * 0.99)`` steps of each chain, in order (docs/algorithms.md#flow-grpo-loop).

Not implemented: Flow-GRPO-Fast's mixed ODE/SDE windows (``sde_window_size``), which need a per-step noise level in
``Generator.sample``; the CPS sampler variant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rewardflow.align.common import policy as P
from rewardflow.align.method import Method, MethodContext, register_method
from rewardflow.config import option


@dataclass
class FlowGRPOConfig:
    group_size: int = option(24, "images per prompt (docs/algorithms.md#flow-grpo-defaults: 24 per group, 48 groups "
                                 "per epoch)")
    rollout_steps: int = option(0, "SDE steps of training rollouts (0: the trainer's sample_steps); "
                                   "docs/algorithms.md#flow-grpo-loop, denoising reduction: 10 for training while "
                                   "evaluation uses 40")
    noise_level: float = option(0.7, "SDE noise level a (docs/algorithms.md#flow-grpo-sde)")
    clip_range: float = option(1e-4, "PPO clip eps (docs/algorithms.md#flow-grpo-defaults)")
    adv_clip_max: float = option(5.0, "advantages clipped to [-5, 5]")
    beta: float = option(0.04, "KL weight (GenEval/OCR 0.04, PickScore 0.01, fast-nocfg 0)")
    kl_form: str = option("code", "'code' (official flow_grpo KL, matches its betas) | 'exact'")
    global_std: bool = option(True, "advantage std over all rewards of the step (images: True, "
                                    "docs/algorithms.md#flow-grpo-defaults)")
    timestep_fraction: float = option(0.99, "train on int(T * fraction) steps, in order (9 of 10)")
    same_noise: bool = option(False, "shared initial noise within a group (flow_grpo `same_latent`)")
    filter_zero_advantage: bool = option(True, "drop samples whose advantage is 0 (groups with equal rewards)")
    train_guidance_scale: float | None = option(None, "CFG for rollouts and replay (None: the generator's)")
    detach_uncond: bool = option(True, "unconditional CFG branch without grad during training "
                                       "(docs/algorithms.md#flow-grpo-objective)")
    micro_batch_size: int = option(0, "samples per micro-batch (0: all samples of the step)")
    updates_per_rollout: int = option(1, "optimizer steps on each rollout (>1: stale old log-probs, the clip binds)")

    def __post_init__(self) -> None:
        if self.rollout_steps < 0:
            raise ValueError(f"grpo: rollout_steps must be >= 0 (0: the trainer's sample_steps), "
                             f"got {self.rollout_steps}")
        if self.group_size < 2:
            raise ValueError(f"grpo: group_size must be >= 2 for group-relative advantages, got {self.group_size}")
        if self.kl_form not in ("code", "exact"):
            raise ValueError(f"grpo: kl_form must be 'code' or 'exact', got {self.kl_form!r}")
        for k in ("noise_level", "clip_range", "adv_clip_max"):
            P.check_positive(f"grpo: {k}", getattr(self, k))
        if self.beta < 0:
            raise ValueError(f"grpo: beta must be >= 0, got {self.beta}")
        P.train_step_indices(1, self.timestep_fraction)
        P.check_count("grpo: updates_per_rollout", self.updates_per_rollout)


@register_method("grpo")
class FlowGRPO(Method):
    config_class = FlowGRPOConfig
    uses_reference = True  # the KL term (beta > 0) runs the base model through gen.reference()

    def __init__(self, config: FlowGRPOConfig, ctx: MethodContext):
        super().__init__(config, ctx)
        if ctx.reward is None:
            raise ValueError("grpo needs a reward (any black-box scalar reward works)")
        self.samples_per_prompt = config.group_size
        self.reuse = P.RolloutReuse(config.updates_per_rollout, slots=ctx.grad_accum)

    # ---------------------------------------------------------------- data
    def collect(self, prompts: list[str], step: int) -> list[dict[str, Any]]:
        return self.reuse.get(lambda: self._collect(prompts))

    def _collect(self, prompts: list[str]) -> list[dict[str, Any]]:
        cfg, ctx = self.config, self.ctx
        steps = cfg.rollout_steps or ctx.sample_steps
        ro = P.rollout(ctx.generator, ctx.reward, prompts, steps, cfg.noise_level, ctx.rng,
                       group_size=cfg.group_size, same_noise=cfg.same_noise, guidance_scale=cfg.train_guidance_scale)
        all_rewards = ctx.gather(ro.rewards.to(ctx.device)).detach().cpu()
        adv = P.group_advantages(ro.prompts, ro.rewards, cfg.global_std, all_rewards=all_rewards)
        finite = torch.isfinite(adv)
        zero = finite & (adv.abs() < 1e-12)
        ctx.log({**P.reward_stats(ro.rewards), "zero_adv_frac": float(zero.float().mean())})
        keep = finite & ~zero if cfg.filter_zero_advantage and (finite & ~zero).any() else finite
        return self.make_batches(ro, adv, keep.nonzero().flatten())

    def make_batches(self, ro: P.Rollout, adv: torch.Tensor, keep: torch.Tensor) -> list[dict[str, Any]]:
        """One micro-batch per (trained step j, chunk of samples); steps in chain order (flow_grpo trains in order)."""
        n_train = P.train_step_indices(ro.num_steps, self.config.timestep_fraction)
        batches = []
        for j in range(n_train):
            for part in P.chunks(len(keep), self.config.micro_batch_size):
                idx = keep[part]
                dev = idx.to(ro.latents.device)
                batches.append({
                    "prompts": [ro.prompts[i] for i in idx.tolist()],
                    "x": ro.latents[dev, j], "x_next": ro.latents[dev, j + 1],
                    "t": ro.timesteps[j].expand(len(idx)), "t_next": ro.timesteps[j + 1].expand(len(idx)),
                    "old_log_prob": ro.log_probs[idx, j], "advantages": adv[idx], "sigma_max": ro.sigma_max,
                })
        return batches

    # ---------------------------------------------------------------- loss
    def _replay(self, batch):
        cfg = self.config
        return P.replay_step(self.ctx.generator, batch["x"], batch["x_next"], batch["t"], batch["t_next"],
                             batch["prompts"], cfg.noise_level, batch["sigma_max"], cfg.train_guidance_scale,
                             cfg.detach_uncond)

    def loss(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, gen = self.config, self.ctx.generator
        res = self._replay(batch)
        adv = batch["advantages"].clamp(-cfg.adv_clip_max, cfg.adv_clip_max)
        policy_loss, metrics = P.ppo_clip_loss(res.log_prob, batch["old_log_prob"], adv, cfg.clip_range)
        loss = policy_loss
        metrics["policy_loss"] = float(policy_loss.detach())
        if cfg.beta > 0:
            with torch.no_grad(), gen.reference():
                ref = self._replay(batch)
            kl = P.gaussian_step_kl(res.mean, ref.mean, res.std)
            if cfg.kl_form == "code":
                kl = kl * P.step_length(gen, batch["t"], batch["t_next"]).to(kl)
            kl = kl.mean()
            loss = loss + cfg.beta * kl
            metrics["kl"] = float(kl.detach())
        return loss, metrics

    # ---------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        return {"reuse": self.reuse.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reuse.load_state_dict(state.get("reuse", {}), self.ctx.generator.device)
