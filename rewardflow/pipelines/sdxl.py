"""Adapter for Stable Diffusion XL and SDXL-Turbo (``StableDiffusionXLPipeline``).

Differences from SD 1.x / 2.x (:mod:`rewardflow.pipelines.sd`, whose sampler, DDIM grid and VAE code this class
reuses): two text encoders (CLIP ViT-L penultimate hidden states concatenated with OpenCLIP ViT-bigG's, whose
projected pooled output is the extra ``text_embeds`` condition) and the micro-conditioning ``time_ids`` =
``(original_h, original_w, crop_top, crop_left, target_h, target_w)`` (Podell et al. 2023, SDXL Sec. 2.2; diffusers
``StableDiffusionXLPipeline._get_add_time_ids``), here ``(H, W, 0, 0, H, W)`` as the pipeline's default call.
The unconditional branch is zeros when the pipeline config has ``force_zeros_for_empty_prompt`` (the default, as
``pipe(prompt)`` with no negative prompt does), else the encoded empty prompt.
"""

from __future__ import annotations

import torch

from rewardflow.pipelines.registry import register_generator
from rewardflow.pipelines.sd import StableDiffusionGenerator


@register_generator("sdxl", pipeline_classes=("StableDiffusionXLPipeline",),
                    description="Stable Diffusion XL (UNet, two CLIP text encoders, pooled + time ids)")
class StableDiffusionXLGenerator(StableDiffusionGenerator):
    """SDXL (and SDXL-Turbo with ``adapter="sdxl"``: then pass ``guidance_scale=0``, no CFG)."""

    pipeline_class = "StableDiffusionXLPipeline"
    lora_component = "unet"
    # as diffusers' examples/text_to_image/train_text_to_image_lora_sdxl.py
    default_lora_targets = ("to_q", "to_k", "to_v", "to_out.0")
    default_guidance_scale = 5.0  # StableDiffusionXLPipeline.__call__ default

    @torch.no_grad()
    def _encode_new(self, prompts: list[str]) -> list[dict[str, torch.Tensor]]:
        emb, _, pooled, _ = self.pipe.encode_prompt(prompts, device=self.device, num_images_per_prompt=1,
                                                    do_classifier_free_guidance=False)
        return [{"encoder_hidden_states": emb[i], "text_embeds": pooled[i]} for i in range(len(prompts))]

    def _time_ids(self, n: int, dtype: torch.dtype) -> torch.Tensor:
        h, w = self.height, self.width
        return torch.tensor([[h, w, 0, 0, h, w]], dtype=dtype, device=self.device).expand(n, 6)

    def _embeds(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        e = super()._embeds(prompts)
        e["time_ids"] = self._time_ids(len(prompts), e["encoder_hidden_states"].dtype)
        return e

    def _uncond(self, n: int) -> dict[str, torch.Tensor]:
        e = self._embeds([""] * n)
        if self.pipe.config.force_zeros_for_empty_prompt:
            e = {k: (v if k == "time_ids" else torch.zeros_like(v)) for k, v in e.items()}
        return e

    def _forward(self, x, model_t, embeds):
        dt = self.dtype
        added = {"text_embeds": embeds["text_embeds"].to(dt), "time_ids": embeds["time_ids"].to(dt)}
        return self.denoiser(x.to(dt), model_t, encoder_hidden_states=embeds["encoder_hidden_states"].to(dt),
                             added_cond_kwargs=added, return_dict=False)[0]


@register_generator("sdxl-turbo", pipeline_classes=("StableDiffusionXLPipeline",), name_pattern=r"turbo",
                    description="SDXL-Turbo (adversarially distilled SDXL): no guidance, one step by default")
class SDXLTurboGenerator(StableDiffusionXLGenerator):
    """SDXL-Turbo: the SDXL adapter with the model card's defaults, ``guidance_scale=0.0`` (no classifier-free
    guidance) and one sampler step. Chosen automatically for a model whose name contains "turbo"."""

    default_guidance_scale = 0.0  # stabilityai/sdxl-turbo model card: num_inference_steps=1, guidance_scale=0.0
    run_defaults = {"steps": 1}
