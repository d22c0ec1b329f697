"""Toy-world evaluation: oracle accuracy (strict and per category) of images against their prompts, on a fixed,
deterministic prompt set from the structural held-out split."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from rewardflow.toy import world


def eval_prompts(split: str = "heldout", per_category: int = 10, seed: int = 0,
                 categories: Sequence[str] | None = None) -> list[str]:
    """``per_category`` prompts of each category (fixed by ``seed``), category-major order. Prompts are distinct
    while the category has enough of them; small categories (4 held-out ``single`` / ``counting`` captions) are
    cycled, so each category weighs the same and repeated prompts get different noise."""
    rng = np.random.default_rng(seed)
    out = []
    for cat in categories or world.CATEGORIES:
        caps = world.split_captions(split, cat)
        idx = sorted(rng.choice(len(caps), size=min(per_category, len(caps)), replace=False))
        out += [caps[idx[i % len(idx)]] for i in range(per_category)]
    return out


def oracle_report(images: torch.Tensor, prompts: Sequence[str]) -> dict:
    """{"accuracy", "partial", "per_category": {cat: accuracy}, "passed": [bool]} for images in [0, 1]."""
    prompts = list(prompts)
    imgs = images.detach().float().cpu()
    passed = world.oracle_batch(imgs, prompts)
    partial = world.oracle_score_batch(imgs, prompts)
    cats = [world.parse_caption(p).category for p in prompts]
    per = {c: float(np.mean([ok for ok, cc in zip(passed, cats) if cc == c]))
           for c in world.CATEGORIES if c in cats}
    return {"accuracy": float(passed.mean()), "partial": float(partial.mean()), "per_category": per,
            "passed": passed.tolist()}


@torch.no_grad()
def generator_accuracy(gen, prompts: Sequence[str], steps: int = 8, seed: int = 0, batch: int = 64,
                       guidance_scale: float | None = None) -> dict:
    """Sample one image per prompt (noise fixed by ``seed``) and report oracle accuracy."""
    prompts = list(prompts)
    noise = torch.randn((len(prompts), *gen.latent_shape), generator=torch.Generator().manual_seed(seed))
    imgs = torch.cat([gen.generate(prompts[i:i + batch], steps, noise=noise[i:i + batch],
                                   guidance_scale=guidance_scale) for i in range(0, len(prompts), batch)])
    rep = oracle_report(imgs, prompts)
    rep["images"] = imgs
    return rep
