"""JPEG compressibility / incompressibility (DDPO, Black et al. 2023; docs/rewards.md#jpeg).

Definition (kvablack/ddpo-pytorch ``ddpo_pytorch/rewards.py``: ``jpeg_incompressibility`` / ``jpeg_compressibility``):
quantize the image to uint8 (``(x * 255).round().clamp(0, 255)``), encode it with PIL as JPEG at quality 95 into a
memory buffer, and take the file size in kB (bytes / 1000). Incompressibility rewards the size, compressibility its
negation. Flow-GRPO uses ``-size / 500`` for compressibility: pass ``scale=1/500``. A black box (no gradients).
"""

from __future__ import annotations

import io

import torch

from rewardflow.io.images import to_uint8
from rewardflow.rewards.base import Reward, register_reward

JPEG_QUALITY = 95  # DDPO


def jpeg_size_kb(images: torch.Tensor, quality: int = JPEG_QUALITY) -> torch.Tensor:
    """``[B, 3, H, W]`` float in [0, 1] -> ``Tensor[B]``: JPEG size in kB (1 kB = 1000 bytes) at ``quality``."""
    from PIL import Image

    sizes = []
    for arr in to_uint8(images).numpy():
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
        sizes.append(buf.tell() / 1000.0)
    return torch.tensor(sizes, dtype=torch.float32)


class JpegReward(Reward):
    """``sign * scale * jpeg_size_kb(x)``; ``sign`` is +1 for incompressibility and -1 for compressibility.
    The prompt is ignored."""

    modality = "image"
    differentiable = False

    def __init__(self, name: str, sign: float, quality: int = JPEG_QUALITY, scale: float = 1.0):
        super().__init__()
        if not 1 <= int(quality) <= 100:
            raise ValueError(f"{name}: JPEG quality must be in [1, 100], got {quality}")
        self.name, self.sign, self.quality, self.scale = name, float(sign), int(quality), float(scale)

    def score(self, media, prompts):
        return self.sign * self.scale * jpeg_size_kb(media, self.quality).to(media.device)

    def extra_repr(self) -> str:
        return f"quality={self.quality}, scale={self.scale}"


@register_reward("jpeg_compressibility", differentiable=False,
                 description="DDPO: minus the JPEG (q=95) size in kB; higher = more compressible")
def _jpeg_compressibility(quality: int = JPEG_QUALITY, scale: float = 1.0) -> JpegReward:
    return JpegReward("jpeg_compressibility", -1.0, quality=quality, scale=scale)


@register_reward("jpeg_incompressibility", differentiable=False,
                 description="DDPO: the JPEG (q=95) size in kB; higher = less compressible")
def _jpeg_incompressibility(quality: int = JPEG_QUALITY, scale: float = 1.0) -> JpegReward:
    return JpegReward("jpeg_incompressibility", 1.0, quality=quality, scale=scale)
