"""Adapter for Stable Diffusion 3 / 3.5 (``diffusers.StableDiffusion3Pipeline``): MMDiT, rectified flow.

Everything parametrization-specific (Euler ODE, Flow-GRPO SDE, log-probs, truncated / checkpointed gradients)
lives in :class:`rewardflow.pipelines.base.Generator`; this file only says how SD3 encodes text, calls its
transformer and decodes latents, exactly as ``pipeline_stable_diffusion_3.py`` of diffusers does:

* text: CLIP-L and CLIP-G penultimate hidden states (concatenated, zero-padded to the T5 width) followed by the
  T5 sequence; pooled projections = [CLIP-L text_embeds, CLIP-G text_embeds] (SD3 paper, Esser et al. 2024, Sec. 5.2;
  ``StableDiffusion3Pipeline.encode_prompt``). The unconditional branch is the empty prompt, as in the pipeline.
* schedule: ``FlowMatchEulerDiscreteScheduler`` with its static ``shift`` (3.0 for SD3/3.5) applied by the
  scheduler itself, ``sigma' = shift * sigma / (1 + (shift - 1) * sigma)`` (SD3 paper, Sec. 5.3.2; docs/algorithms.md#timestep-sampling); if the scheduler
  uses dynamic shifting, ``mu`` comes from ``calculate_shift`` of the SD3 pipeline module with its defaults.
* guidance: true classifier-free guidance on the [uncond, cond] batch (base ``Generator.predict``).
* VAE: ``x = vae.decode(z / scaling_factor + shift_factor)`` with both factors read from the VAE config.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from rewardflow.pipelines._flow_transformer import FlowTransformerGenerator
from rewardflow.pipelines.base import Conditioning, prompt_list
from rewardflow.pipelines.loading import load_diffusers_pipeline
from rewardflow.pipelines.registry import register_generator

# LoRA targets: the attention projections of both MMDiT streams (image: to_q/k/v/out, text: add_q/k/v, to_add_out),
# the default of diffusers' examples/dreambooth/train_dreambooth_lora_sd3.py and of Flow-GRPO's SD3 training script.
SD3_LORA_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
                    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out")


@register_generator("sd3", pipeline_classes=("StableDiffusion3Pipeline",),
                    description="Stable Diffusion 3 / 3.5 (MMDiT rectified flow; CLIP-L + CLIP-G + T5)")
class SD3Generator(FlowTransformerGenerator):
    """Stable Diffusion 3 / 3.5 Medium / Large / Large-Turbo."""

    pipeline_class = "StableDiffusion3Pipeline"
    default_lora_targets = SD3_LORA_TARGETS
    shard_block_classes = ("JointTransformerBlock",)

    # StableDiffusion3Pipeline.__call__ defaults: guidance 7.0, T5 length 256 (1024 px from the transformer config)
    default_guidance_scale = 7.0
    default_max_sequence_length = 256

    def __init__(self, pipe, guidance_scale: float | None = None, height: int | None = None,
                 width: int | None = None, max_sequence_length: int | None = None,
                 device: str | torch.device | None = None):
        super().__init__(pipe, self.default_guidance_scale if guidance_scale is None else guidance_scale, height,
                         width, max_sequence_length or self.default_max_sequence_length, device)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: torch.dtype | str = torch.float32,
                        device: str | torch.device = "cpu", guidance_scale: float | None = None,
                        height: int | None = None, width: int | None = None, max_sequence_length: int | None = None,
                        **load_options) -> SD3Generator:
        """Load a ``StableDiffusion3Pipeline`` directory or hub id (e.g.
        ``stabilityai/stable-diffusion-3.5-medium``); ``load_options`` (offload, VAE slicing / tiling, gradient
        checkpointing, attention backend) go to :func:`rewardflow.pipelines.loading.load_diffusers_pipeline`."""
        from diffusers import StableDiffusion3Pipeline  # lazy: diffusers is a heavy import

        pipe = load_diffusers_pipeline(StableDiffusion3Pipeline, path, dtype=dtype, device=device, **load_options)
        return cls(pipe, guidance_scale=guidance_scale, height=height, width=width,
                   max_sequence_length=max_sequence_length)

    def _pixel_multiple(self) -> int:
        return self.vae_scale_factor * self.denoiser.config.patch_size

    @property
    def latent_shape(self) -> tuple[int, ...]:
        f = self.vae_scale_factor
        return (self.denoiser.config.in_channels, self.height // f, self.width // f)

    def _set_timesteps_kwargs(self, steps: int) -> dict:
        # the static shift is applied inside scheduler.set_timesteps; dynamic shifting (optional in SD3.5 configs)
        # needs mu from the image sequence length, computed as StableDiffusion3Pipeline.__call__ does
        cfg = self.scheduler.config
        if not cfg.get("use_dynamic_shifting", False):
            return {}
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import (
            calculate_shift,  # lazy: diffusers is a heavy import
        )

        _, h, w = self.latent_shape
        p = self.denoiser.config.patch_size
        mu = calculate_shift((h // p) * (w // p), cfg.get("base_image_seq_len", 256),
                             cfg.get("max_image_seq_len", 4096), cfg.get("base_shift", 0.5),
                             cfg.get("max_shift", 1.16))
        return {"mu": mu}

    def _encode_batch(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        embeds, _, pooled, _ = self.pipe.encode_prompt(prompt=prompts, prompt_2=None, prompt_3=None,
                                                       device=self.device, do_classifier_free_guidance=False,
                                                       max_sequence_length=self.max_sequence_length)
        return {"prompt_embeds": embeds, "pooled_projections": pooled}

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        prompts = prompt_list(prompts)
        # the pipeline's negative prompt is "" for all three encoders: encoded once, cached
        return Conditioning(prompts, self._encode(prompts), self._encode([""] * len(prompts)))

    def _forward(self, x, model_t, embeds):
        dt = self.denoiser.dtype
        return self.denoiser(hidden_states=x.to(dt), timestep=model_t,
                             encoder_hidden_states=embeds["prompt_embeds"].to(dt),
                             pooled_projections=embeds["pooled_projections"].to(dt), return_dict=False)[0]


@register_generator("sd3-turbo", pipeline_classes=("StableDiffusion3Pipeline",), name_pattern=r"turbo",
                    description="Stable Diffusion 3.5 Large Turbo (distilled): no guidance, 4 steps by default")
class SD3TurboGenerator(SD3Generator):
    """SD 3.5 Large Turbo with its model card's defaults: ``guidance_scale=0.0`` (no guidance) and 4 steps. Chosen
    automatically for a model whose name contains "turbo"."""

    default_guidance_scale = 0.0  # stabilityai/stable-diffusion-3.5-large-turbo card: 4 steps, guidance_scale=0.0
    run_defaults = {"steps": 4}
