"""Adapter for FLUX.1 [dev] / [schnell] (``diffusers.FluxPipeline``): MM-DiT + single-stream blocks, rectified flow.

Mirrors ``diffusers/pipelines/flux/pipeline_flux.py`` step by step:

* text: CLIP-L *pooled* output (``pooled_projections``) + the T5 sequence (``encoder_hidden_states``); the text
  position ids are zeros (``FluxPipeline.encode_prompt``).
* latents: this adapter keeps the VAE latents unpacked, ``[B, C, H, W]`` (so the same seed gives the same noise as
  the pipeline, which draws unpacked noise and packs it), and packs them into 2x2 patches ``[B, HW/4, 4C]`` with
  the image position ids only around the transformer call (``_pack_latents`` / ``_prepare_latent_image_ids`` /
  ``_unpack_latents`` of ``FluxPipeline``). The Euler / SDE updates are element-wise, so the layout does not
  change them.
* schedule: ``sigmas = linspace(1, 1/N, N)`` passed to the scheduler together with the resolution-dependent shift
  ``mu = calculate_shift(image_seq_len, ...)`` (dynamic shifting, [dev]); [schnell]'s scheduler has shift 1 and no
  dynamic shifting, so ``mu`` is ignored there, as in the pipeline.
* guidance: FLUX.1 [dev] is guidance-distilled: the guidance scale is an *input* of the transformer (guidance
  embedding, ``transformer.config.guidance_embeds``), one forward per step, no [uncond, cond] doubling.
  [schnell] has no guidance input; its guidance scale is ignored (as ``FluxPipeline`` ignores it).
* VAE: ``vae.decode(z / scaling_factor + shift_factor)`` (factors from the VAE config).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from rewardflow.pipelines._flow_transformer import FlowTransformerGenerator
from rewardflow.pipelines.base import Conditioning, prompt_list
from rewardflow.pipelines.loading import load_diffusers_pipeline
from rewardflow.pipelines.registry import register_generator

# LoRA targets: attention projections of both streams plus the feed-forwards of the double-stream blocks, the
# default of diffusers' examples/dreambooth/train_dreambooth_lora_flux.py ("attn.to_k" etc. also match the
# single-stream blocks' attention).
FLUX_LORA_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
                     "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
                     "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2")


@register_generator("flux", pipeline_classes=("FluxPipeline",),
                    description="FLUX.1 [dev] (distilled guidance) rectified flow; CLIP + T5")
class FluxGenerator(FlowTransformerGenerator):
    """FLUX.1 [dev] and [schnell]; ``guidance_scale`` is the distilled guidance of [dev] (default 3.5)."""

    pipeline_class = "FluxPipeline"
    default_lora_targets = FLUX_LORA_TARGETS
    # FluxPipeline.__call__ defaults: distilled guidance 3.5, T5 length 512 (1024 px from the transformer config)
    default_guidance_scale = 3.5
    default_max_sequence_length = 512
    shard_block_classes = ("FluxTransformerBlock", "FluxSingleTransformerBlock")

    def __init__(self, pipe, guidance_scale: float | None = None, height: int | None = None,
                 width: int | None = None, max_sequence_length: int | None = None,
                 device: str | torch.device | None = None):
        super().__init__(pipe, self.default_guidance_scale if guidance_scale is None else guidance_scale, height,
                         width, max_sequence_length or self.default_max_sequence_length, device)
        self.guidance_embeds = bool(self.denoiser.config.guidance_embeds)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: torch.dtype | str = torch.float32,
                        device: str | torch.device = "cpu", guidance_scale: float | None = None,
                        height: int | None = None, width: int | None = None, max_sequence_length: int | None = None,
                        **load_options) -> FluxGenerator:
        """Load a ``FluxPipeline`` directory or hub id (``black-forest-labs/FLUX.1-dev`` / ``-schnell``);
        ``load_options`` go to :func:`rewardflow.pipelines.loading.load_diffusers_pipeline`."""
        from diffusers import FluxPipeline  # lazy: diffusers is a heavy import

        pipe = load_diffusers_pipeline(FluxPipeline, path, dtype=dtype, device=device, **load_options)
        return cls(pipe, guidance_scale=guidance_scale, height=height, width=width,
                   max_sequence_length=max_sequence_length)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        # FluxPipeline.prepare_latents: 2 * (size // (vae_scale_factor * 2)), channels = in_channels // 4
        f = self.vae_scale_factor * 2
        return (self.denoiser.config.in_channels // 4, 2 * (self.height // f), 2 * (self.width // f))

    def image_seq_len(self) -> int:
        _, h, w = self.latent_shape
        return (h // 2) * (w // 2)

    def _set_timesteps_kwargs(self, steps: int) -> dict:
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift  # lazy: diffusers is a heavy import

        cfg = self.scheduler.config
        sigmas = None if cfg.get("use_flow_sigmas", False) else np.linspace(1.0, 1 / steps, steps)
        mu = calculate_shift(self.image_seq_len(), cfg.get("base_image_seq_len", 256),
                             cfg.get("max_image_seq_len", 4096), cfg.get("base_shift", 0.5),
                             cfg.get("max_shift", 1.15))
        return {"sigmas": sigmas, "mu": mu}

    def _encode_batch(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        embeds, pooled, _ = self.pipe.encode_prompt(prompt=prompts, prompt_2=None, device=self.device,
                                                    max_sequence_length=self.max_sequence_length)
        return {"prompt_embeds": embeds, "pooled_projections": pooled}

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        prompts = prompt_list(prompts)
        # no unconditional branch: [dev] is guidance-distilled and [schnell] is unguided
        return Conditioning(prompts, self._encode(prompts), None)

    def predict(self, x_t: torch.Tensor, t: torch.Tensor | float, cond: Conditioning,
                guidance_scale: float | None = None, detach_uncond: bool = False) -> torch.Tensor:
        """Flow velocity. [dev]: the guidance scale is fed to the guidance embedding (one forward, no CFG);
        [schnell]: ``guidance_scale`` is ignored. ``detach_uncond`` has no meaning here (no uncond branch)."""
        g = self.guidance_scale if guidance_scale is None else float(guidance_scale)
        t = torch.as_tensor(t, device=x_t.device, dtype=torch.float32)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        embeds = dict(cond.embeds)
        if self.guidance_embeds:
            embeds["guidance"] = torch.full([1], g, device=x_t.device, dtype=torch.float32).expand(x_t.shape[0])
        return self._forward(x_t, self.model_time(t), embeds)

    def _forward(self, x, model_t, embeds):
        from diffusers import FluxPipeline  # lazy: diffusers is a heavy import

        if "guidance" not in embeds and self.guidance_embeds:
            raise ValueError("this FLUX transformer has a guidance embedding: call predict(), which supplies it")
        b, c, h, w = x.shape
        dt = self.denoiser.dtype
        prompt_embeds = embeds["prompt_embeds"].to(dt)
        packed = FluxPipeline._pack_latents(x.to(dt), b, c, h, w)
        img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x.device, prompt_embeds.dtype)
        txt_ids = torch.zeros(prompt_embeds.shape[1], 3, device=x.device, dtype=prompt_embeds.dtype)
        # the pipeline passes the scheduler timestep (sigma * 1000, in the latents' dtype) divided by 1000;
        # the transformer multiplies it (and the guidance) by 1000 again inside its embeddings
        out = self.denoiser(hidden_states=packed, timestep=model_t.to(dt) / 1000, guidance=embeds.get("guidance"),
                            pooled_projections=embeds["pooled_projections"].to(dt),
                            encoder_hidden_states=prompt_embeds, txt_ids=txt_ids, img_ids=img_ids,
                            return_dict=False)[0]
        f = self.vae_scale_factor
        return FluxPipeline._unpack_latents(out, h * f, w * f, f)


@register_generator("flux-schnell", pipeline_classes=("FluxPipeline",), name_pattern=r"schnell",
                    description="FLUX.1 [schnell] (timestep-distilled, no guidance): 4 steps, T5 length 256")
class FluxSchnellGenerator(FluxGenerator):
    """FLUX.1 [schnell] with its model card's defaults: 4 steps, ``max_sequence_length=256``, no guidance (the
    transformer has no guidance embedding, so the scale is ignored). Chosen automatically for a model whose name
    contains "schnell"."""

    default_guidance_scale = 0.0  # black-forest-labs/FLUX.1-schnell model card: guidance_scale=0.0, 4 steps, 256
    default_max_sequence_length = 256
    run_defaults = {"steps": 4}
