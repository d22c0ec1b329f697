"""Shared pieces of the regression / preference family (Flow-DPO, Diffusion-DPO, Flow-RWR; DRAGON may reuse them).

Not a method: on-policy sampling of N images per prompt with black-box scoring, the per-sample denoising error of
any parametrization (the one code path behind Diffusion-DPO and Flow-DPO, docs/algorithms.md#flow-dpo-beta), and the builders
that turn scores into (winner, loser) pairs or regression weights (docs/algorithms.md#building-blocks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rewardflow.rewards.base import finite_mask


@dataclass
class Samples:
    """``N * G`` samples, ``G`` consecutive per prompt: ``prompts[i*G:(i+1)*G]`` are all prompt ``i``."""

    prompts: list[str]
    latents: torch.Tensor   # [N*G, *latent] final latents x0 (detached)
    images: torch.Tensor    # [N*G, 3, H, W] in [0, 1]
    rewards: torch.Tensor   # [N*G] fp32 on CPU; NaN where the reward could not score
    group_size: int


@torch.no_grad()
def sample_and_score(gen, reward, prompts: Sequence[str], group_size: int, steps: int,
                     generator: torch.Generator | None = None, sde: bool = False,
                     noise_level: float | None = None, use_reference: bool = False) -> Samples:
    """Sample ``group_size`` images per prompt (independent initial noise; ODE by default) and score them.
    ``use_reference`` samples with the reference policy (flow_grpo's DPO samples with the ``ref`` adapter)."""
    prompts = [p for p in prompts for _ in range(group_size)]
    cond = gen.encode_prompts(prompts)
    noise = gen.initial_noise(len(prompts), generator)
    if use_reference:
        with gen.reference():
            traj = gen.sample(cond, steps, noise=noise, sde=sde, noise_level=noise_level, generator=generator)
    else:
        traj = gen.sample(cond, steps, noise=noise, sde=sde, noise_level=noise_level, generator=generator)
    x0 = traj.final.detach()
    images = gen.decode(x0)
    scores = reward(images, prompts).detach().float().cpu()
    if scores.shape != (len(prompts),):
        raise ValueError(f"reward returned shape {tuple(scores.shape)}, expected [{len(prompts)}]")
    return Samples(prompts, x0, images, scores, group_size)


def best_worst_pairs(scores: torch.Tensor, group_size: int, min_gap: float = 0.0) -> list[tuple[int, int]]:
    """(winner, loser) indices: the best and the worst finite-scored sample of each consecutive group of
    ``group_size`` (flow_grpo ``train_sd3_dpo.py`` stat tracker in ``dpo`` mode, docs/algorithms.md#flow-dpo-official). Groups with
    fewer than two finite scores, or a best-worst gap ``<= min_gap`` (ties), give no pair."""
    if scores.ndim != 1 or scores.numel() % group_size:
        raise ValueError(f"scores must be [N*group_size], got shape {tuple(scores.shape)} for group {group_size}")
    pairs = []
    for g in range(scores.numel() // group_size):
        s = scores[g * group_size:(g + 1) * group_size]
        ok = finite_mask(s)
        if int(ok.sum()) < 2:
            continue
        idx = ok.nonzero().flatten()
        vals = s[idx]
        w, l = int(idx[vals.argmax()]), int(idx[vals.argmin()])
        if float(s[w] - s[l]) <= min_gap:
            continue
        pairs.append((g * group_size + w, g * group_size + l))
    return pairs


def per_sample_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean over C,H,W of (pred - target)^2`` per sample, fp32 (Diffusion-DPO code uses the per-sample mean)."""
    return (pred.float() - target.float()).pow(2).flatten(1).mean(1)


def denoising_errors(gen, x0: torch.Tensor, cond, noise: torch.Tensor, t: torch.Tensor,
                     with_reference: bool = False):
    """Per-sample denoising errors of the policy (and the reference) in the generator's own parametrization:
    ``x_t = gen.noisy(x0, noise, t)``, error ``|| gen.target(x0, noise, t) - model(x_t, t) ||^2`` (mean over dims).
    Epsilon models give the Diffusion-DPO errors, flow models the Flow-DPO velocity errors — one code path.
    No classifier-free guidance at training time. Returns ``(err_policy, err_ref or None, pred_policy, pred_ref)``."""
    x_t = gen.noisy(x0, noise, t)
    target = gen.target(x0, noise, t)
    pred = gen.predict(x_t, t, cond, guidance_scale=1.0)
    err = per_sample_error(pred, target)
    err_ref = pred_ref = None
    if with_reference:
        with torch.no_grad(), gen.reference():
            pred_ref = gen.predict(x_t, t, cond, guidance_scale=1.0).detach()
        err_ref = per_sample_error(pred_ref, target)
    return err, err_ref, pred, pred_ref


def draw_noise_and_t(gen, x0: torch.Tensor, generator: torch.Generator | None = None):
    """Standard-normal noise like ``x0`` and training timesteps from the generator's own density (logit-normal
    sigmas for flow, uniform integers for diffusion), both from ``generator`` (checkpointed by the trainer)."""
    noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
    t = gen.sample_t(x0.shape[0], generator=generator).to(x0.device)
    return noise, t
