"""VAE helpers shared by the image adapters: normalized denoiser latents <-> pixels in [0, 1].

The latent normalization is read from ``vae.config`` (``scaling_factor`` with ``shift_factor``, or
``latents_mean`` / ``latents_std``) exactly as the diffusers pipelines apply it.
"""

from __future__ import annotations

import torch


def _vae_stats(vae, like: torch.Tensor) -> tuple[torch.Tensor | float, torch.Tensor | float, float]:
    """(mean, std, scaling) of the latent normalization in ``vae.config``: ``latents_mean`` / ``latents_std`` when
    present (some SDXL VAEs), else ``shift_factor`` (SD3, FLUX; 0 when absent) and std 1."""
    cfg = vae.config
    scaling = float(cfg.scaling_factor)
    lm, ls = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
    if lm is not None and ls is not None:
        shape = (1, -1) + (1,) * (like.ndim - 2)
        mean = torch.tensor(lm, device=like.device, dtype=like.dtype).view(shape)
        std = torch.tensor(ls, device=like.device, dtype=like.dtype).view(shape)
        return mean, std, scaling
    return float(getattr(cfg, "shift_factor", None) or 0.0), 1.0, scaling


def vae_decode(vae, latents: torch.Tensor, clamp: bool = True) -> torch.Tensor:
    """Differentiable decode of denoiser latents to pixels in [0, 1], undoing the latent normalization exactly as
    the diffusers pipelines do before ``vae.decode`` (``latents / scaling_factor + shift_factor``, or
    ``latents * latents_std / scaling_factor + latents_mean``), then ``(x / 2 + 0.5).clamp(0, 1)`` as
    ``VaeImageProcessor.postprocess`` does. Slicing / tiling follow ``vae.enable_slicing()`` / ``enable_tiling()``."""
    vdtype = next(vae.parameters()).dtype
    z = latents.to(vdtype)
    mean, std, scaling = _vae_stats(vae, z)
    z = z * std / scaling + mean
    x = vae.decode(z, return_dict=False)[0].float()
    x = x / 2 + 0.5
    return x.clamp(0, 1) if clamp else x


def vae_encode(vae, images: torch.Tensor, generator: torch.Generator | None = None,
               sample: bool = False) -> torch.Tensor:
    """Pixels in [0, 1] -> normalized denoiser latents (the inverse of :func:`vae_decode`): the posterior mean
    (``sample=False``) or a draw from it, then ``(z - shift) * scaling`` (or ``(z - mean) * scaling / std``)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"vae_encode expects images [B, 3, H, W] in [0, 1], got {tuple(images.shape)}")
    vdtype = next(vae.parameters()).dtype
    dist = vae.encode((images * 2 - 1).to(vdtype)).latent_dist
    z = dist.sample(generator) if sample else dist.mode()
    mean, std, scaling = _vae_stats(vae, z)
    return (z - mean) * scaling / std
