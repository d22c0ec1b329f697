"""PRDP: Proximal Reward Difference Prediction (Deng et al., CVPR 2024, arXiv 2402.08714; docs/algorithms.md#prdp).

No official code exists; this follows the math of docs/algorithms.md#prdp (and the KL-regularised objective, docs/algorithms.md#kl-regularized-objective):

* docs/algorithms.md#prdp-objective: reward-difference regression: for two sampled trajectories a, b of the same prompt the KL-regularised optimum
  satisfies ``r(a) - r(b) = beta * sum_t [log p/p_base (a_t) - log p/p_base (b_t)]`` (Z(c) cancels), and the model is
  trained to *regress* the observed difference (a squared error, not a Bradley-Terry likelihood);
* docs/algorithms.md#prdp-per-step: per-timestep decomposition: step t alone predicts the whole difference with a factor T,
  ``L_t = (dr - beta * T * [lr_t(a) - lr_t(b)])^2`` with ``lr_t = log p_theta(x_{t-1}|x_t) - log p_base(x_{t-1}|x_t)``,
  so each micro-step backpropagates through one denoiser call per trajectory;
* docs/algorithms.md#prdp-proximal: proximal online updates: trajectories come from the current policy p_old (``group_size`` = K per prompt,
  all K(K-1)/2 pairs or K random pairs); the part of ``lr_t`` that moves away from the sampling policy,
  ``log p_theta/p_old``, is clipped to ``[log(1-eps), log(1+eps)]`` and the pessimistic (larger) of the clipped and
  unclipped squared errors is taken (a PPO-style trust region); plus ``kl_beta`` x the per-step Gaussian KL to the
  pretrained reference (``gen.reference()``, LoRA disabled).

``base="old"`` (default) measures the implied reward against the sampling policy (online/proximal RDP: the model
fits the reward difference *on top of* the previous iterate, the ratio is exactly 1 before the first update);
``base="reference"`` measures it against the pretrained model as in the offline objective of docs/algorithms.md#prdp-objective. docs/algorithms.md#prdp-proximal marks the
exact placement as unverified against the paper's Algorithm 1 — both are offered.

Rewards are black-box scalars. ``normalize_rewards`` divides the differences by the step's reward std (over every
process), which makes ``beta`` independent of the reward's scale (our choice; the paper tunes beta per reward).
Defaults for beta, eps and K are not published (no code; docs/algorithms.md#prdp-proximal): ours are tuned on the toy world and named so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import torch

from rewardflow.align.common import policy as P
from rewardflow.align.method import Method, MethodContext, register_method
from rewardflow.config import option


@dataclass
class PRDPConfig:
    group_size: int = option(4, "K trajectories per prompt")
    pairs: str = option("all", "'all': every pair within a prompt; 'random': K random pairs per prompt")
    beta: float = option(1000.0, "KL temperature of the implied reward (log-probs are mean-over-dims, "
                                 "docs/algorithms.md#log-probs)")
    clip_range: float = option(1e-4, "proximal clip of p_theta/p_old (ratio in [1-eps, 1+eps])")
    kl_beta: float = option(0.0, "weight of the per-step Gaussian KL to the pretrained reference")
    base: str = option("old", "'old' (sampling policy, online/proximal) | 'reference' (pretrained, "
                              "docs/algorithms.md#prdp-objective)")
    normalize_rewards: bool = option(True, "divide reward differences by the step's reward std")
    noise_level: float = option(1.0, "DDIM eta on diffusion generators; the SDE's a on flow generators (0.7)")
    timestep_fraction: float = option(1.0, "train the first int(T * fraction) steps")
    micro_batch_groups: int = option(0, "prompts (whole groups) per micro-batch (0: all)")
    updates_per_rollout: int = option(1, "optimizer steps on each rollout (>1: stale old log-probs, the clip binds)")

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise ValueError(f"prdp: group_size must be >= 2 to form pairs, got {self.group_size}")
        if self.base not in ("old", "reference"):
            raise ValueError(f"prdp: base must be 'old' or 'reference', got {self.base!r}")
        if self.pairs not in ("all", "random"):
            raise ValueError(f"prdp: pairs must be 'all' or 'random', got {self.pairs!r}")
        for k in ("beta", "clip_range", "noise_level"):
            P.check_positive(f"prdp: {k}", getattr(self, k))
        if not 0 < self.clip_range < 1:
            raise ValueError(f"prdp: clip_range must be in (0, 1), got {self.clip_range}")
        P.train_step_indices(1, self.timestep_fraction)
        P.check_count("prdp: updates_per_rollout", self.updates_per_rollout)


def build_pairs(prompts: list[str | None], mode: str = "all", generator: torch.Generator | None = None,
                group_size: int | None = None) -> torch.Tensor:
    """Index pairs ``[M, 2]`` of samples sharing a prompt: all unordered pairs, or (``"random"``) as many random
    distinct pairs per prompt as the prompt has samples (at most all of them)."""
    if mode not in ("all", "random"):
        raise ValueError(f"pairs must be 'all' or 'random', got {mode!r}")
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        if p is not None:  # None marks a sample that must not be paired
            groups.setdefault(p, []).append(i)
    out = []
    for idx in groups.values():
        allp = list(combinations(idx, 2))
        if mode == "random" and allp:
            k = min(len(allp), group_size or len(idx))
            sel = torch.randperm(len(allp), generator=generator)[:k].tolist()
            allp = [allp[s] for s in sorted(sel)]
        out += allp
    return torch.tensor(out, dtype=torch.long).reshape(-1, 2)


def prdp_loss(logp: torch.Tensor, old_logp: torch.Tensor, base_logp: torch.Tensor, pairs: torch.Tensor,
              reward_diff: torch.Tensor, beta: float, num_steps: int, clip_range: float
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-timestep proximal RDP loss over pairs (docs/algorithms.md#prdp-per-step and docs/algorithms.md#prdp-proximal).

    logp / old_logp / base_logp: [N] per-sample log-probs of one step under theta, the sampling policy and the base
    of the implied reward; pairs: [M, 2]; reward_diff: [M] = r(a) - r(b).
    ``lr = (logp - old) + (old - base)``; the first part is clipped to ``[log(1-eps), log(1+eps)]``;
    ``loss = mean_pairs max((dr - beta T (lr_a - lr_b))^2, (dr - beta T (lrc_a - lrc_b))^2)``."""
    old_logp, base_logp = old_logp.to(logp), base_logp.to(logp)
    prox = logp - old_logp
    offset = old_logp - base_logp
    lr = prox + offset
    lr_c = prox.clamp(math.log(1 - clip_range), math.log(1 + clip_range)) + offset
    a, b = pairs[:, 0].to(logp.device), pairs[:, 1].to(logp.device)
    dr = reward_diff.to(logp)
    pred = beta * num_steps * (lr[a] - lr[b])
    pred_c = beta * num_steps * (lr_c[a] - lr_c[b])
    err, err_c = (dr - pred) ** 2, (dr - pred_c) ** 2
    loss = torch.maximum(err, err_c).mean()
    with torch.no_grad():
        metrics = {"rdp_mse_unclipped": float(err.mean()), "pred_diff_abs": float(pred.abs().mean()),
                   "reward_diff_abs": float(dr.abs().mean()),
                   "clipfrac": float((prox.abs() > -math.log(1 - clip_range)).float().mean()),
                   "ratio_max_dev": float((prox.exp() - 1).abs().max())}
    return loss, metrics


@register_method("prdp")
class PRDP(Method):
    config_class = PRDPConfig
    uses_reference = True  # kl_beta > 0 or base="reference" run the base model through gen.reference()

    def __init__(self, config: PRDPConfig, ctx: MethodContext):
        super().__init__(config, ctx)
        if ctx.reward is None:
            raise ValueError("prdp needs a reward (any black-box scalar reward works)")
        self.needs_ref = config.kl_beta > 0 or config.base == "reference"
        self.samples_per_prompt = config.group_size
        self.reuse = P.RolloutReuse(config.updates_per_rollout, slots=ctx.grad_accum)

    # ---------------------------------------------------------------- data
    def collect(self, prompts: list[str], step: int) -> list[dict[str, Any]]:
        return self.reuse.get(lambda: self._collect(prompts))

    def _collect(self, prompts: list[str]) -> list[dict[str, Any]]:
        cfg, ctx = self.config, self.ctx
        ro = P.rollout(ctx.generator, ctx.reward, prompts, ctx.sample_steps, cfg.noise_level, ctx.rng,
                       group_size=cfg.group_size)
        all_r = ctx.gather(ro.rewards.to(ctx.device)).detach().cpu().double()
        all_r = all_r[torch.isfinite(all_r)]
        scale = float(all_r.std(unbiased=False)) + 1e-8 if cfg.normalize_rewards and all_r.numel() else 1.0
        ctx.log(P.reward_stats(ro.rewards))
        rng = ctx.rng if ctx.rng is None or ctx.rng.device.type == "cpu" else None
        g = cfg.group_size
        n_groups = len(ro.prompts) // g
        batches = []
        for j in range(P.train_step_indices(ro.num_steps, cfg.timestep_fraction)):
            for gidx in P.chunks(n_groups, cfg.micro_batch_groups):
                idx = torch.cat([torch.arange(k * g, (k + 1) * g) for k in gidx.tolist()])
                prompts_mb = [ro.prompts[i] for i in idx.tolist()]
                r = ro.rewards[idx].double() / scale
                # samples the reward could not score (NaN) take part in no pair
                pairs = build_pairs([p if torch.isfinite(r[i]) else None for i, p in enumerate(prompts_mb)],
                                    cfg.pairs, rng, g)
                if not len(pairs):
                    continue
                dev = idx.to(ro.latents.device)
                batches.append({
                    "prompts": prompts_mb, "x": ro.latents[dev, j], "x_next": ro.latents[dev, j + 1],
                    "t": ro.timesteps[j].expand(len(idx)), "t_next": ro.timesteps[j + 1].expand(len(idx)),
                    "old_log_prob": ro.log_probs[idx, j], "pairs": pairs,
                    "reward_diff": (r[pairs[:, 0]] - r[pairs[:, 1]]).float(),
                    "num_steps": ro.num_steps, "sigma_max": ro.sigma_max,
                })
        return batches

    # ---------------------------------------------------------------- loss
    def _replay(self, batch):
        return P.replay_step(self.ctx.generator, batch["x"], batch["x_next"], batch["t"], batch["t_next"],
                             batch["prompts"], self.config.noise_level, batch["sigma_max"])

    def loss(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, gen = self.config, self.ctx.generator
        res = self._replay(batch)
        ref = None
        if self.needs_ref:
            with torch.no_grad(), gen.reference():
                ref = self._replay(batch)
        base = batch["old_log_prob"] if cfg.base == "old" else ref.log_prob
        loss, metrics = prdp_loss(res.log_prob, batch["old_log_prob"], base, batch["pairs"], batch["reward_diff"],
                                  cfg.beta, batch["num_steps"], cfg.clip_range)
        if cfg.kl_beta > 0:
            kl = P.gaussian_step_kl(res.mean, ref.mean, res.std).mean()
            loss = loss + cfg.kl_beta * kl
            metrics["kl"] = float(kl.detach())
        return loss, metrics

    # ---------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        return {"reuse": self.reuse.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reuse.load_state_dict(state.get("reuse", {}), self.ctx.generator.device)
