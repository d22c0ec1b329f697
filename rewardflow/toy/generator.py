"""Adapter for the toy rectified-flow pipeline (:class:`rewardflow.toy.pipeline.ToyFlowPipeline`).

Exactly the same surface as a real model's adapter: the sampling loop, the parametrization and the log-probs all
live in :class:`rewardflow.pipelines.base.Generator`; this file only says how to encode text, call the network and
decode.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch

from rewardflow.pipelines.base import UNET_BLOCK_CLASSES, Conditioning, Generator, prompt_list
from rewardflow.pipelines.loading import check_pipeline_dir, parametrization_from_scheduler
from rewardflow.pipelines.registry import register_generator
from rewardflow.toy.assets import asset_path


@register_generator("toy", pipeline_classes=("ToyFlowPipeline",), embedded=True,
                    description="the embedded toy text-to-image model (shipped weights)")
class ToyGenerator(Generator):
    modality = "image"
    shard_block_classes = UNET_BLOCK_CLASSES  # a diffusers UNet2DConditionModel
    # the toy world's own prompts, reward and evaluation (used only when a run names none)
    run_defaults = {"steps": 4, "reward": "toy_clip:1,toy_clip_adv:1", "prompts": "toy:train",
                    "eval_prompts": "toy:heldout", "diversity_encoder": "toy_clip", "noise_opt_steps": 4,
                    "noise_opt_guidance_scale": 2.0}

    def __init__(self, pipe, guidance_scale: float = 1.0, device: str | torch.device = "cpu"):
        self.pipe = pipe.to(device)
        self.denoiser = pipe.unet
        self.scheduler = pipe.scheduler
        self.parametrization = parametrization_from_scheduler(pipe.scheduler)
        self.num_train_timesteps = int(pipe.scheduler.config.num_train_timesteps)
        self.guidance_scale = float(guidance_scale)
        pipe.text_encoder.requires_grad_(False).eval()
        self._cache: dict[str, dict[str, torch.Tensor]] = {}

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, **kwargs) -> "ToyGenerator":
        """Load from a ``save_pretrained`` directory (default: the shipped ``assets/toy/generator``)."""
        # lazy: the toy pipeline imports transformers (~1 s), not needed to register the adapter
        from rewardflow.toy.pipeline import ToyFlowPipeline

        path = asset_path("generator") if path is None else path
        if not os.path.isdir(path):
            raise FileNotFoundError(f"toy generator directory not found: {path} "
                                    "(train one with `rewardflow toy train-generator --out DIR`)")
        check_pipeline_dir(path)  # a missing component / weight file is reported by name
        pipe = ToyFlowPipeline.from_pretrained(str(path), dtype=torch.float32)
        return cls(pipe, **kwargs)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self.pipe.latent_shape()

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        missing = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if missing:
            emb = self.pipe.encode_prompt(missing, self.device)
            for i, p in enumerate(missing):
                self._cache[p] = {k: v[i] for k, v in emb.items()}
        return {k: torch.stack([self._cache[p][k] for p in prompts]) for k in self._cache[prompts[0]]}

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        prompts = prompt_list(prompts)
        # the unconditional ("") branch is always encoded (cached once), so guidance can be changed per call
        return Conditioning(prompts, self._encode(prompts), self._encode([""] * len(prompts)))

    def _forward(self, x, model_t, embeds):
        return self.pipe.denoise(x, model_t, embeds, unet=self.denoiser)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.pipe.decode_latents(latents.float())

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.pipe.encode_images(images)
