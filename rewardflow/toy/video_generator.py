"""Adapter for the toy text-to-video rectified-flow pipeline (:class:`rewardflow.toy.video_pipeline.ToyVideoFlowPipeline`).

The image toy adapter with a video surface: ``modality = "video"``, latents ``[B, T*12, 16, 16]`` (frames folded
into channels), ``decode(latents, frames=None) -> [B, T', 3, H, W]`` (``frames``: decode only those frame indices, an
exact subset of the full decode) and ``encode_videos`` for editing mode (InstructVideo / SDEdit). Sampling,
parametrization, log-probs and LoRA are the shared :class:`~rewardflow.pipelines.base.Generator` code.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch

from rewardflow.pipelines.registry import register_generator
from rewardflow.toy.assets import asset_path
from rewardflow.toy.generator import ToyGenerator


@register_generator("toy_video", pipeline_classes=("ToyVideoFlowPipeline",), embedded=True,
                    description="the embedded toy text-to-video model (shipped weights, 4 frames of 32x32)")
class ToyVideoGenerator(ToyGenerator):
    modality = "video"
    run_defaults = {"steps": 4, "noise_opt_steps": 4}

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, **kwargs) -> "ToyVideoGenerator":
        """Load from a ``save_pretrained`` directory (default: the shipped ``assets/toy/video_generator``)."""
        # lazy: the toy pipelines import transformers (~1 s), not needed to register the adapter
        from rewardflow.toy.video_pipeline import ToyVideoFlowPipeline

        path = asset_path("video_generator") if path in (None, "toy_video") else path
        if not os.path.isdir(path):
            raise FileNotFoundError(f"toy video generator directory not found: {path} "
                                    "(train one with `rewardflow toy train-video-generator --out DIR`)")
        pipe = ToyVideoFlowPipeline.from_pretrained(str(path), dtype=torch.float32)
        return cls(pipe, **kwargs)

    @property
    def num_frames(self) -> int:
        return self.pipe.num_frames

    def decode(self, latents: torch.Tensor, frames: Sequence[int] | None = None) -> torch.Tensor:
        """Latents -> ``[B, T, 3, H, W]`` in [0, 1] (differentiable); ``frames``: only those frame indices."""
        return self.pipe.decode_latents(latents.float(), frames=frames)

    def encode(self, videos: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``[B, T, 3, H, W]`` in [0, 1] -> latents (editing mode; exact, so ``generator`` is unused)."""
        return self.pipe.encode_videos(videos.to(self.device).float()).to(self.dtype)

    # the names the methods use for media -> latents, as the other video adapters (pipelines/_video.py)
    encode_videos = encode
    encode_images = encode
