"""Prompts -> generated PNG (image models) or MP4 (video models) files + a JSON manifest, with one code path for
``rewardflow sample`` and evaluation.

Reproducibility: image ``j`` (counting prompts in order, ``n_per_prompt`` samples each) starts from the initial
noise drawn by ``torch.Generator().manual_seed(seed + j)``, so an image does not depend on the batch size or on
the other prompts in the file. Sampling is the adapter's ODE sampler (:meth:`Generator.generate`).

Layout of ``out``::

    out/00000_00.png ... out/{prompt_index:05d}_{sample_index:02d}.png   (.mp4 for a video model, ``fps`` frames/s)
    out/manifest.json   {"format", "media": "image" | "video", "model", "adapter", "lora", "steps",
                         "guidance_scale", "seed", "n_per_prompt", "height", "width", ["frames", "fps"],
                         "images": [{"file", "prompt", "prompt_index", "sample_index", "seed"}]}

(the media manifest of :mod:`rewardflow.io.manifest`, which ``rewardflow score --prompts`` reads). A progress bar
counts the samples (off under ``--quiet``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from rewardflow.io.images import save_image
from rewardflow.io.manifest import MANIFEST, write_manifest
from rewardflow.io.progress import progress
from rewardflow.io.video import save_video

__all__ = ["MANIFEST", "initial_noise", "sample_to_files"]


def initial_noise(gen, seeds: Sequence[int]) -> torch.Tensor:
    """One initial latent per seed, each from its own ``torch.Generator`` (fp32 CPU draw, as ``Generator``)."""
    return torch.cat([gen.initial_noise(1, torch.Generator().manual_seed(int(s))) for s in seeds])


def sample_to_files(gen, prompts: Sequence[str], out: str | Path, *, steps: int, guidance_scale: float | None = None,
                    seed: int = 0, n_per_prompt: int = 1, batch_size: int = 4, info: dict | None = None,
                    fps: float = 8.0, desc: str = "sampling") -> dict:
    """Generate ``n_per_prompt`` images (or videos) per prompt with ``gen`` and write PNGs (MP4s at ``fps``) +
    ``manifest.json`` into ``out``. ``info`` is merged into the manifest (model path, adapter, LoRA, ...). Returns the
    manifest."""
    prompts = list(prompts)
    if not prompts:
        raise ValueError("sample_to_files needs at least one prompt")
    if n_per_prompt < 1 or batch_size < 1 or steps < 1:
        raise ValueError(f"n_per_prompt, batch_size and steps must be >= 1, got {n_per_prompt}, {batch_size}, {steps}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(i, k, p, seed + i * n_per_prompt + k) for i, p in enumerate(prompts) for k in range(n_per_prompt)]
    rows = []
    g = gen.guidance_scale if guidance_scale is None else float(guidance_scale)
    bar = progress(total=len(jobs), desc=desc, unit="sample")
    for b in range(0, len(jobs), batch_size):
        chunk = jobs[b:b + batch_size]
        noise = initial_noise(gen, [j[3] for j in chunk])
        images = gen.generate([j[2] for j in chunk], steps, noise=noise, guidance_scale=g)
        video = images.ndim == 5  # [B, T, 3, H, W]
        for (i, k, p, s), img in zip(chunk, images):
            name = f"{i:05d}_{k:02d}.{'mp4' if video else 'png'}"
            if video:
                save_video(img, out / name, fps=fps)
            else:
                save_image(img, out / name)
            rows.append({"file": name, "prompt": p, "prompt_index": i, "sample_index": k, "seed": s})
        bar.update(len(chunk))
    bar.close()
    meta = dict(info or {})
    meta.update(steps=steps, guidance_scale=g, seed=seed, n_per_prompt=n_per_prompt,
                height=int(images.shape[-2]), width=int(images.shape[-1]))
    if images.ndim == 5:
        meta.update(frames=int(images.shape[1]), fps=fps)
    return write_manifest(out, rows, "video" if images.ndim == 5 else "image", meta)
