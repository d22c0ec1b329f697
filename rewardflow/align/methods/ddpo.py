"""DDPO: Denoising Diffusion Policy Optimization, DDPO_IS (Black et al., ICLR 2024, arXiv 2305.13301;
docs/algorithms.md#ddpo).

Implemented from docs/algorithms.md#ddpo and the behaviour of the official ``kvablack/ddpo-pytorch`` (``scripts/train.py`` loss,
``ddpo_pytorch/stat_tracking.py``, ``ddpo_pytorch/diffusers_patch/ddim_with_logprob.py``):

* the denoising chain is an MDP whose policy is the DDIM step with eta (docs/algorithms.md#ddim-eta): rollouts with per-step log-probs via
  ``Generator.sample(sde=True)`` (eta = ``noise_level`` = 1.0 on epsilon / v-prediction generators);
* advantages: per-prompt stat tracking (a FIFO of the last ``stat_buffer_size`` rewards per prompt kept across
  steps; the batch's statistics while a prompt has fewer than ``stat_min_count``), or a batch z-score;
  clipped to [-5, 5]; the tracker is method state, saved and restored with the checkpoint;
* PPO clipped surrogate with eps = 1e-4 on ``rho_t = exp(log pi - log pi_old)`` (log-probs averaged over dims,
  docs/algorithms.md#log-probs); no KL term;
* the order of the timesteps is shuffled independently per sample and the first ``timestep_fraction * T`` are
  trained, each as its own micro-step of the accumulation (docs/algorithms.md#ddpo-loop).

On a flow (rectified-flow) generator the same objective applies unchanged: the MDP's policy is then Flow-GRPO's
marginal-preserving SDE step (docs/algorithms.md#flow-grpo-sde), which is again a Gaussian with a closed-form
log-prob, so the PPO ratio is well defined. Nothing here branches on the model; ``noise_level`` is DDIM's eta on a
diffusion generator and the SDE's a on a flow generator (set 0.7 there, Flow-GRPO's value).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rewardflow.align.common import policy as P
from rewardflow.align.method import Method, MethodContext, register_method
from rewardflow.config import option


@dataclass
class DDPOConfig:
    noise_level: float = option(1.0, "DDIM eta (docs/algorithms.md#ddpo-defaults); on a flow generator: the SDE's a "
                                     "(0.7 is Flow-GRPO's)")
    samples_per_prompt: int = option(1, "chains per prompt in each step")
    clip_range: float = option(1e-4, "PPO clip eps (docs/algorithms.md#ddpo-defaults)")
    adv_clip_max: float = option(5.0, "advantage clip (docs/algorithms.md#ddpo-defaults)")
    per_prompt_stat_tracking: bool = option(True, "normalize rewards per prompt with a running buffer (ddpo-pytorch "
                                                  "per_prompt_stat_tracking); else over the batch")
    stat_buffer_size: int = option(16, "ddpo-pytorch base config (32 for the aesthetic/alignment runs)")
    stat_min_count: int = option(16, "samples a prompt needs in its buffer before its own statistics are used (else "
                                     "the batch's)")
    timestep_fraction: float = option(1.0, "train on the first int(T * fraction) steps of the shuffled order")
    shuffle_timesteps: str = option("per_sample", "'per_sample' (official) | 'shared' (one order per step) | 'none'")
    micro_batch_size: int = option(0, "samples per micro-batch (0: all samples of the step)")
    updates_per_rollout: int = option(1, "optimizer steps on each rollout (>1: stale old log-probs, the clip binds)")

    def __post_init__(self) -> None:
        if self.shuffle_timesteps not in ("per_sample", "shared", "none"):
            raise ValueError(f"ddpo: shuffle_timesteps must be 'per_sample', 'shared' or 'none', "
                             f"got {self.shuffle_timesteps!r}")
        if self.samples_per_prompt < 1:
            raise ValueError(f"ddpo: samples_per_prompt must be >= 1, got {self.samples_per_prompt}")
        P.check_positive("ddpo: noise_level", self.noise_level)
        P.check_positive("ddpo: clip_range", self.clip_range)
        P.train_step_indices(1, self.timestep_fraction)
        P.check_count("ddpo: updates_per_rollout", self.updates_per_rollout)
        P.check_count("ddpo: stat_buffer_size", self.stat_buffer_size)


@register_method("ddpo")
class DDPO(Method):
    config_class = DDPOConfig

    def __init__(self, config: DDPOConfig, ctx: MethodContext):
        super().__init__(config, ctx)
        if ctx.reward is None:
            raise ValueError("ddpo needs a reward (any black-box scalar reward works)")
        self.tracker = P.PerPromptStatTracker(config.stat_buffer_size, config.stat_min_count)
        self.noise_level = config.noise_level
        self.samples_per_prompt = config.samples_per_prompt
        self.reuse = P.RolloutReuse(config.updates_per_rollout, slots=ctx.grad_accum)

    # ---------------------------------------------------------------- data
    def advantages(self, prompts: list[str], rewards: torch.Tensor) -> torch.Tensor:
        if self.config.per_prompt_stat_tracking:
            return self.tracker.update(prompts, rewards)
        return P.batch_advantages(rewards, self.ctx.gather(rewards.to(self.ctx.device)).cpu())

    def collect(self, prompts: list[str], step: int) -> list[dict[str, Any]]:
        return self.reuse.get(lambda: self._collect(prompts))

    def _collect(self, prompts: list[str]) -> list[dict[str, Any]]:
        cfg, ctx = self.config, self.ctx
        ro = P.rollout(ctx.generator, ctx.reward, prompts, ctx.sample_steps, self.noise_level, ctx.rng,
                       group_size=cfg.samples_per_prompt)
        adv = self.advantages(ro.prompts, ro.rewards)
        ctx.log(P.reward_stats(ro.rewards))
        keep = torch.isfinite(adv).nonzero().flatten()  # samples the reward could not score are dropped
        n, steps = len(adv), ro.num_steps
        if cfg.shuffle_timesteps == "per_sample":
            order = torch.stack([torch.randperm(steps, generator=self._cpu_rng()) for _ in range(n)])
        elif cfg.shuffle_timesteps == "shared":
            order = torch.randperm(steps, generator=self._cpu_rng()).expand(n, steps)
        else:
            order = torch.arange(steps).expand(n, steps)
        batches = []
        rows = torch.arange(n)
        for j in range(P.train_step_indices(steps, cfg.timestep_fraction)):
            for part in P.chunks(len(keep), cfg.micro_batch_size):
                idx = keep[part]
                s = order[idx, j]
                dev = idx.to(ro.latents.device)
                batches.append({
                    "prompts": [ro.prompts[i] for i in idx.tolist()],
                    "x": ro.latents[dev, s.to(dev.device)], "x_next": ro.latents[dev, (s + 1).to(dev.device)],
                    "t": ro.timesteps[s], "t_next": ro.timesteps[s + 1],
                    "old_log_prob": ro.log_probs[rows[idx], s], "advantages": adv[idx], "sigma_max": ro.sigma_max,
                })
        return batches

    def _cpu_rng(self) -> torch.Generator | None:
        rng = self.ctx.rng
        return rng if rng is None or rng.device.type == "cpu" else None

    # ---------------------------------------------------------------- loss
    def loss(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        res = P.replay_step(self.ctx.generator, batch["x"], batch["x_next"], batch["t"], batch["t_next"],
                            batch["prompts"], self.noise_level, batch["sigma_max"])
        adv = batch["advantages"].clamp(-cfg.adv_clip_max, cfg.adv_clip_max)
        loss, metrics = P.ppo_clip_loss(res.log_prob, batch["old_log_prob"], adv, cfg.clip_range)
        return loss, metrics

    # ---------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        return {"stat_tracker": self.tracker.state_dict(), "reuse": self.reuse.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "stat_tracker" in state:
            self.tracker.load_state_dict(state["stat_tracker"])
        self.reuse.load_state_dict(state.get("reuse", {}), self.ctx.generator.device)
