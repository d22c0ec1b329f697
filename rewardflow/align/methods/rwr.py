"""Flow-RWR: reward-weighted regression with the model's own denoising loss (docs/algorithms.md#flow-rwr).

Weighted maximum likelihood toward ``p* ∝ p_ref exp(r / beta)``:
``L = E[ w(x0, c) * || target - model(x_t, t, c) ||^2 ]`` with stop-gradient weights ``w = exp(r / beta)``
normalised to mean 1 per prompt group or per batch (VideoAlign, arXiv 2501.13918; flow_grpo ``train_sd3_sft.py``
``type='rwr'`` / ``'sft'``). The regression target is the generator's own parametrization (velocity for flow,
epsilon for diffusion), so the same file trains both.

* ``weighting: rejection`` — weight only the best sample of each group (the ``beta -> 0`` limit): online
  rejection-sampling SFT, flow_grpo's ``type='sft'``.
* ``mean_zero`` — subtract the mean weight (advantage-weighted RWR). docs/toy-world.md#lessons: with non-negative weights
  alone the model regresses on its own artefacts and collapses (self-consumption, 26% -> 0% oracle accuracy); mean-zero
  weights cancel that common gradient the way DPO's reference term does.
* ``kl_weight`` — ``|| model(x_t) - reference(x_t) ||^2`` (velocity-KL to the frozen reference, docs/toy-world.md#lessons).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rewardflow.align.common.samples import (
    denoising_errors,
    draw_noise_and_t,
    sample_and_score,
)
from rewardflow.align.method import Method, register_method
from rewardflow.config import option
from rewardflow.rewards.base import finite_mask

WEIGHTINGS = ("exp", "rejection")
NORMALIZE = ("prompt", "batch")


@dataclass
class RWRConfig:
    num_samples_per_prompt: int = option(4, "on-policy samples per prompt (one group)")
    beta: float = option(0.05, "reward temperature of w = exp(r / beta)")
    weighting: str = option("exp", "'exp' or 'rejection' (best of each group: rejection-sampling SFT)")
    normalize: str = option("prompt", "weights normalised to mean 1 per 'prompt' group or over the 'batch'")
    mean_zero: bool = option(True, "w - mean(w): advantage-weighted RWR (stable on self-samples)")
    kl_weight: float = option(1.0, "velocity-KL to the reference (0 = off)")
    timesteps_per_sample: int = option(1, "(noise, t) draws per sample per loss")
    sde: bool = option(False, "sample with the SDE / DDIM-eta instead of the ODE")
    noise_level: float = option(0.7, "SDE noise level a (flow) or DDIM eta (diffusion) when sde is true")

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS or self.normalize not in NORMALIZE:
            rwr_weights(torch.zeros(1), 1, 1.0, self.weighting, self.normalize)  # raises the clear error
        if self.beta <= 0 or self.num_samples_per_prompt < 1 or self.timesteps_per_sample < 1:
            raise ValueError("rwr needs beta > 0, num_samples_per_prompt >= 1 and timesteps_per_sample >= 1")


def rwr_weights(scores: torch.Tensor, group_size: int, beta: float, weighting: str = "exp",
                normalize: str = "prompt", mean_zero: bool = False) -> torch.Tensor:
    """Per-sample regression weights (stop-grad) for scores ``[N*G]`` (groups of ``G`` consecutive samples).

    exp: ``w = exp(r / beta) / mean(exp(r / beta))`` over the group (``prompt``) or all samples (``batch``);
    rejection: ``w = G`` on the group's best sample, 0 elsewhere (the mean is 1, as for exp);
    mean_zero: ``w - 1`` (the normalised weights have mean 1). Non-finite scores get weight 0 and are left out of
    every normalisation."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
    s = scores.float()
    ok = finite_mask(s)
    w = torch.zeros_like(s)
    if weighting == "rejection":
        for g in range(s.numel() // group_size):
            sl = slice(g * group_size, (g + 1) * group_size)
            okg = ok[sl]
            if okg.any():
                idx = okg.nonzero().flatten()
                w[g * group_size + int(idx[s[sl][idx].argmax()])] = float(okg.sum())
        groups = [torch.arange(g * group_size, (g + 1) * group_size) for g in range(s.numel() // group_size)]
    else:
        groups = ([torch.arange(g * group_size, (g + 1) * group_size) for g in range(s.numel() // group_size)]
                  if normalize == "prompt" else [torch.arange(s.numel())])
        for idx in groups:
            idx = idx[ok[idx]]
            if idx.numel():
                z = s[idx] / beta
                e = torch.exp(z - z.max())  # softmax * n: exp(r/beta) / mean, shift-invariant
                w[idx] = e / e.mean()
    if mean_zero:
        for idx in groups:
            idx = idx[ok[idx]]
            if idx.numel():
                w[idx] = w[idx] - w[idx].mean()
    return w


@register_method("rwr")
class FlowRWR(Method):
    """Flow-RWR / online rejection-sampling SFT on on-policy samples (docs/algorithms.md#flow-rwr)."""

    config_class = RWRConfig
    uses_reference = True

    def __init__(self, config: RWRConfig, ctx):
        super().__init__(config, ctx)
        if ctx.reward is None:
            raise ValueError("rwr needs a reward to weight its samples")
        self.samples_per_prompt = config.num_samples_per_prompt

    def collect(self, prompts: list[str], step: int) -> list[dict[str, Any]]:
        c, ctx = self.config, self.ctx
        s = sample_and_score(ctx.generator, ctx.reward, prompts, c.num_samples_per_prompt, ctx.sample_steps,
                             generator=ctx.rng, sde=c.sde, noise_level=c.noise_level if c.sde else None)
        ok = finite_mask(s.rewards)
        w = rwr_weights(s.rewards, c.num_samples_per_prompt, c.beta, c.weighting, c.normalize, c.mean_zero)
        ctx.log({"reward_mean": float(s.rewards[ok].mean()) if ok.any() else float("nan"),
                 "reward_std": float(s.rewards[ok].std()) if int(ok.sum()) > 1 else 0.0,
                 "nonfinite_rewards": float((~ok).sum())})
        keep = ok.nonzero().flatten()
        if keep.numel() == 0:
            return []  # nothing usable: the trainer skips the step
        return [{"prompts": [s.prompts[i] for i in keep.tolist()], "x0": s.latents[keep.to(s.latents.device)],
                 "weights": w[keep]}]

    def loss(self, batch: dict[str, Any], step: int):
        c, gen = self.config, self.ctx.generator
        cond = gen.encode_prompts(batch["prompts"])
        x0, w = batch["x0"], batch["weights"].to(batch["x0"].device)
        total = 0.0
        diag = {"weighted_mse": 0.0, "kl": 0.0}
        for _ in range(c.timesteps_per_sample):
            noise, t = draw_noise_and_t(gen, x0, self.ctx.rng)
            err, _, pred, pred_ref = denoising_errors(gen, x0, cond, noise, t, with_reference=False)
            loss = (w * err).mean()
            diag["weighted_mse"] += float(loss.detach()) / c.timesteps_per_sample
            if c.kl_weight > 0:
                x_t = gen.noisy(x0, noise, t)
                with torch.no_grad(), gen.reference():
                    pred_ref = gen.predict(x_t, t, cond, guidance_scale=1.0)
                kl = (pred.float() - pred_ref.float()).pow(2).flatten(1).mean(1).mean()
                loss = loss + c.kl_weight * kl
                diag["kl"] += float(kl.detach()) / c.timesteps_per_sample
            total = total + loss / c.timesteps_per_sample
        return total, diag
