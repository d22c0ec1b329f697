"""Best-of-N: sample N initial noises per prompt, keep the sample the reward scores highest.

The simplest inference-time alignment baseline (ReNO's "image-select" baseline is best-of-50; docs/algorithms.md#best-of-n), and
the initialisation ReNO can start from. Works with any reward, differentiable or black box.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rewardflow.pipelines.base import Generator
from rewardflow.rewards.base import Reward


@dataclass
class BestOfNResult:
    images: torch.Tensor  # [B, 3, H, W]
    noise: torch.Tensor  # the selected initial noise per prompt
    scores: torch.Tensor  # [B] best score
    all_scores: torch.Tensor  # [B, N]


@torch.no_grad()
def best_of_n(gen: Generator, reward: Reward, prompts: Sequence[str], n: int, steps: int,
              noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
              chunk: int = 256) -> BestOfNResult:
    """``noise``: optional ``[B, N, *latent]`` candidates (candidate 0 is usually the plain sample's noise)."""
    prompts = list(prompts)
    if n < 1:
        raise ValueError(f"best_of_n needs n >= 1, got {n}")
    b = len(prompts)
    if noise is None:
        noise = torch.randn((b, n, *gen.latent_shape), generator=generator)
    if tuple(noise.shape[:2]) != (b, n):
        raise ValueError(f"noise must be [B={b}, N={n}, ...], got {tuple(noise.shape)}")
    flat_noise = noise.reshape(b * n, *noise.shape[2:]).to(gen.device, gen.dtype)
    flat_prompts = [p for p in prompts for _ in range(n)]
    images, scores = [], []
    for i in range(0, b * n, chunk):
        cond = gen.encode_prompts(flat_prompts[i:i + chunk])
        img = gen.decode(gen.sample(cond, steps, noise=flat_noise[i:i + chunk]).final)
        images.append(img)
        scores.append(reward(img, flat_prompts[i:i + chunk]).cpu())
    images = torch.cat(images).view(b, n, *images[0].shape[1:])
    all_scores = torch.cat(scores).view(b, n)
    best = all_scores.nan_to_num(-float("inf")).argmax(1)
    idx = torch.arange(b)
    return BestOfNResult(images[idx, best], noise[idx, best], all_scores[idx, best], all_scores)
