"""Adapter for LTX-Video text-to-video (``diffusers.LTXPipeline``): ``LTXVideoTransformer3DModel``, rectified flow.

Mirrors ``diffusers/pipelines/ltx/pipeline_ltx.py``:

* text: T5 last hidden state padded to ``max_sequence_length`` (128) *with its attention mask*, which the
  transformer takes as ``encoder_attention_mask``; the unconditional branch is the empty negative prompt.
* latents: kept unpacked, ``[B, C, F, H/32, W/32]`` with ``F = (num_frames - 1) // 8 + 1`` (so the same seed gives
  the pipeline's noise, drawn unpacked), and packed into tokens ``[B, F*H*W / (pt*p*p), C*pt*p*p]`` only around
  the transformer call (``LTXPipeline._pack_latents`` / ``_unpack_latents``), with ``num_frames/height/width`` of the
  latent grid and ``rope_interpolation_scale = (temporal_ratio / frame_rate, spatial_ratio, spatial_ratio)``. The
  Euler / SDE updates are element-wise, so the layout does not change them.
* schedule: ``sigmas = linspace(1, 1/N, N)`` with the resolution-dependent shift
  ``mu = calculate_shift(F * H * W, base_image_seq_len, max_image_seq_len, base_shift, max_shift)`` (dynamic
  shifting, and the scheduler's ``shift_terminal`` stretch), exactly the arguments ``LTXPipeline.__call__`` passes to
  ``scheduler.set_timesteps``. The network is conditioned on ``sigma * 1000``.
* guidance: true CFG on [uncond, cond] (``guidance_scale`` 3.0, the pipeline default; ``guidance_rescale`` 0).
* VAE (``AutoencoderKLLTXVideo``): ``vae.decode(z * latents_std / scaling_factor + latents_mean, decode_timestep)``
  (``LTXPipeline._denormalize_latents``; the timestep only for VAEs with ``timestep_conditioning``, LTX 0.9.1+;
  the pipeline's optional decode noise is not added, i.e. ``decode_noise_scale = 0``); encode is the inverse
  (``_normalize_latents``) with the posterior mode.
  Frame subsets: with a *causal* decoder (``decoder_causal=True``; per-position RMSNorm, causal temporal convs,
  no temporal attention) the latent prefix ``0..k`` gives pixel frames ``0..8k`` identical to a full decode; the
  released LTX-Video VAEs have a *non-causal* decoder (each output frame sees later latent frames), so there
  ``decode(frames=...)`` decodes every latent frame and slices (exact, no saving).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from rewardflow.pipelines._video import VideoGenerator
from rewardflow.pipelines.loading import load_diffusers_pipeline, parametrization_from_scheduler
from rewardflow.pipelines.registry import register_generator


@register_generator("ltx", pipeline_classes=("LTXPipeline",),
                    description="LTX-Video text-to-video (rectified flow with dynamic shift, T5, 3D VAE)")
class LTXGenerator(VideoGenerator):
    """LTX-Video 0.9.x T2V. Latents ``[B, C, F, H/32, W/32]`` (unpacked); :meth:`decode` gives ``[B, T, 3, H, W]``."""

    pipeline_class = "LTXPipeline"
    # attention projections (self- and cross-attention), the targets of finetrainers' LTX-Video LoRA training
    default_lora_targets = ("to_q", "to_k", "to_v", "to_out.0")
    shard_block_classes = ("LTXVideoTransformerBlock",)

    def __init__(self, pipe, guidance_scale: float = 3.0, num_frames: int = 161, height: int = 512,
                 width: int = 704, max_sequence_length: int = 128, frame_rate: int = 25,
                 decode_timestep: float = 0.0):
        # defaults: LTXPipeline.__call__ (161 frames, 512x704, guidance 3.0, text length 128, 25 fps)
        self.temporal_ratio = int(pipe.vae_temporal_compression_ratio)
        self.spatial_ratio = int(pipe.vae_spatial_compression_ratio)
        self.patch_size = int(pipe.transformer_spatial_patch_size)
        self.patch_size_t = int(pipe.transformer_temporal_patch_size)
        self._init_video(pipe, guidance_scale, num_frames, height, width, max_sequence_length,
                         self.spatial_ratio * self.patch_size)
        self.scheduler = pipe.scheduler
        self.parametrization = parametrization_from_scheduler(self.scheduler)
        if self.parametrization != "flow":
            raise ValueError(f"LTXGenerator needs a flow-matching scheduler, got {type(self.scheduler).__name__}")
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        self.frame_rate = float(frame_rate)
        self.decode_timestep = float(decode_timestep)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: torch.dtype | str = torch.float32,
                        device: str | torch.device = "cpu", guidance_scale: float = 3.0, num_frames: int = 161,
                        height: int = 512, width: int = 704, max_sequence_length: int = 128, frame_rate: int = 25,
                        decode_timestep: float = 0.0, **load_options) -> LTXGenerator:
        """Load an ``LTXPipeline`` directory or hub id (``Lightricks/LTX-Video``)."""
        if path is None:
            raise ValueError(f"{cls.__name__} needs a model directory or hub id (e.g. Lightricks/LTX-Video)")
        pipe = load_diffusers_pipeline(cls.pipeline_class, path, dtype=dtype, device=device, **load_options)
        return cls(pipe, guidance_scale=guidance_scale, num_frames=num_frames, height=height, width=width,
                   max_sequence_length=max_sequence_length, frame_rate=frame_rate, decode_timestep=decode_timestep)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        s = self.spatial_ratio
        return (int(self.denoiser.config.in_channels), self.latent_frames, self.height // s, self.width // s)

    def _set_timesteps_kwargs(self, steps: int) -> dict:
        from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift  # lazy: diffusers is a heavy import

        cfg = self.scheduler.config
        _, f, h, w = self.latent_shape
        mu = calculate_shift(f * h * w, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                             cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
        return {"sigmas": np.linspace(1.0, 1 / steps, steps), "mu": mu}

    # ---------------------------------------------------------------- text, network
    def _encode_batch(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        embeds, mask, _, _ = self.pipe.encode_prompt(prompts, do_classifier_free_guidance=False,
                                                     max_sequence_length=self.max_sequence_length,
                                                     device=self.device)
        return {"encoder_hidden_states": embeds, "encoder_attention_mask": mask}

    def _forward(self, x, model_t, embeds):
        dt = self.denoiser.dtype
        _, _, f, h, w = x.shape
        packed = self.pipe._pack_latents(x.to(dt), self.patch_size, self.patch_size_t)
        out = self.denoiser(hidden_states=packed, encoder_hidden_states=embeds["encoder_hidden_states"].to(dt),
                            timestep=model_t, encoder_attention_mask=embeds["encoder_attention_mask"],
                            num_frames=f, height=h, width=w,
                            rope_interpolation_scale=(self.temporal_ratio / self.frame_rate, self.spatial_ratio,
                                                      self.spatial_ratio),
                            return_dict=False)[0]
        return self.pipe._unpack_latents(out, f // self.patch_size_t, h // self.patch_size, w // self.patch_size,
                                         self.patch_size, self.patch_size_t)

    # ---------------------------------------------------------------- VAE
    def decode_prefix(self, needed: int, total: int) -> int:
        return needed if self.pipe.vae.config.decoder_causal else total

    def _stats(self, like):
        vae = self.pipe.vae
        shape = (1, -1, 1, 1, 1)
        mean = vae.latents_mean.view(shape).to(like.device, like.dtype)
        std = vae.latents_std.view(shape).to(like.device, like.dtype)
        return mean, std, float(vae.config.scaling_factor)

    def _vae_decode(self, latents):
        vae = self.pipe.vae
        z = latents.to(next(vae.parameters()).dtype)
        mean, std, scale = self._stats(z)
        z = z * std / scale + mean
        temb = None
        if vae.config.timestep_conditioning:
            temb = torch.full((z.shape[0],), self.decode_timestep, device=z.device, dtype=z.dtype)
        return vae.decode(z, temb, return_dict=False)[0]

    def _vae_encode(self, video, generator):
        dist = self.pipe.vae.encode(video).latent_dist
        z = dist.mode() if generator is None else dist.sample(generator)
        mean, std, scale = self._stats(z)
        return (z - mean) * scale / std
