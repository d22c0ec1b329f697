"""Adapter for Wan 2.1 text-to-video (``diffusers.WanPipeline``): ``WanTransformer3DModel``, rectified flow.

Mirrors ``diffusers/pipelines/wan/pipeline_wan.py``:

* text: UMT5 last hidden state, tokens past the prompt length zeroed, padded to ``max_sequence_length`` (512)
  (``WanPipeline._get_t5_prompt_embeds``); the unconditional branch is the empty negative prompt.
* latents ``[B, 16, F, H/8, W/8]`` with ``F = (num_frames - 1) // 4 + 1`` (``WanPipeline.prepare_latents``).
* schedule: flow matching with the static ``shift`` (Wan 2.1 paper, Sec. 3 / official ``sample_shift``: 3.0 at 480p,
  5.0 at 720p). The released diffusers checkpoints ship ``UniPCMultistepScheduler(use_flow_sigmas=True,
  flow_shift=...)``; the adapter swaps in ``FlowMatchEulerDiscreteScheduler(shift=flow_shift)`` (the Euler ODE of
  the same flow, the policy of Flow-GRPO / DanceGRPO) and installs it in ``pipe`` too, so ``pipe(...)`` and
  :meth:`Generator.sample` run the same chain. The network is conditioned on ``sigma * 1000``.
* guidance: true CFG on [uncond, cond] (``guidance_scale`` 5.0, the pipeline default).
* VAE (``AutoencoderKLWan``, causal 3D): ``vae.decode(z * latents_std + latents_mean)``; encode is the inverse
  with the posterior mode (``WanVideoToVideoPipeline``). The decoder runs latent frame by latent frame with a
  causal feature cache, so decoding the prefix of latent frames ``0..k`` gives pixel frames ``0..4k`` *identical*
  to a full decode (same operations on the same inputs): :meth:`decode` with ``frames`` decodes exactly that prefix.
"""

from __future__ import annotations

import os

import torch

from rewardflow.pipelines._video import VideoGenerator
from rewardflow.pipelines.loading import load_diffusers_pipeline
from rewardflow.pipelines.registry import register_generator


def flow_euler_from(scheduler):
    """A ``FlowMatchEulerDiscreteScheduler`` for a Wan scheduler: returned as is when already one, else built with
    the ``flow_shift`` of a ``UniPCMultistepScheduler(use_flow_sigmas=True)`` (the released Wan 2.1 configs)."""
    from diffusers import FlowMatchEulerDiscreteScheduler  # lazy: diffusers is a heavy import

    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        return scheduler
    cfg = scheduler.config
    if not (cfg.get("use_flow_sigmas", False) or cfg.get("prediction_type") == "flow_prediction"):
        raise ValueError(f"{type(scheduler).__name__} is not a flow-matching scheduler; Wan needs "
                         "FlowMatchEulerDiscreteScheduler or UniPCMultistepScheduler(use_flow_sigmas=True)")
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=int(cfg.get("num_train_timesteps", 1000)),
                                           shift=float(cfg.get("flow_shift", 1.0) or 1.0))


@register_generator("wan", pipeline_classes=("WanPipeline",),
                    description="Wan 2.1 text-to-video (rectified flow, UMT5, causal 3D VAE)")
class WanGenerator(VideoGenerator):
    """Wan 2.1 T2V (1.3B / 14B). Latents ``[B, C, F, H/8, W/8]``; :meth:`decode` gives ``[B, T, 3, H, W]``."""

    pipeline_class = "WanPipeline"
    # attention projections of the self- and cross-attention (attn1 / attn2) of every block: the targets of
    # diffusers' Wan LoRA training (finetrainers) and of DanceGRPO's Wan script
    default_lora_targets = ("to_q", "to_k", "to_v", "to_out.0")
    shard_block_classes = ("WanTransformerBlock",)

    def __init__(self, pipe, guidance_scale: float = 5.0, num_frames: int = 81, height: int = 480,
                 width: int = 832, max_sequence_length: int = 512):
        # defaults: WanPipeline.__call__ (81 frames, 480x832, guidance 5.0, text length 512)
        if getattr(pipe, "transformer_2", None) is not None or pipe.config.get("boundary_ratio") is not None:
            raise ValueError("WanGenerator supports one transformer (Wan 2.1 / 2.2-TI2V); two-expert Wan 2.2 "
                             "pipelines (transformer_2 / boundary_ratio) are not supported")
        self.temporal_ratio = int(pipe.vae_scale_factor_temporal)
        self.spatial_ratio = int(pipe.vae_scale_factor_spatial)
        p = pipe.transformer.config.patch_size
        self._init_video(pipe, guidance_scale, num_frames, height, width, max_sequence_length,
                         self.spatial_ratio * int(p[1]))
        self.scheduler = flow_euler_from(pipe.scheduler)
        pipe.scheduler = self.scheduler  # so pipe(...) runs the same chain as Generator.sample
        self.parametrization = "flow"
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        self.expand_timesteps = bool(pipe.config.get("expand_timesteps", False))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: torch.dtype | str = torch.float32,
                        device: str | torch.device = "cpu", guidance_scale: float = 5.0, num_frames: int = 81,
                        height: int = 480, width: int = 832, max_sequence_length: int = 512,
                        **load_options) -> WanGenerator:
        """Load a ``WanPipeline`` directory or hub id (``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``); ``load_options``
        (offload, VAE slicing / tiling, gradient checkpointing, attention) go to ``load_diffusers_pipeline``."""
        if path is None:
            raise ValueError(f"{cls.__name__} needs a model directory or hub id (e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers)")
        pipe = load_diffusers_pipeline(cls.pipeline_class, path, dtype=dtype, device=device, **load_options)
        return cls(pipe, guidance_scale=guidance_scale, num_frames=num_frames, height=height, width=width,
                   max_sequence_length=max_sequence_length)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        s = self.spatial_ratio
        return (int(self.denoiser.config.in_channels), self.latent_frames, self.height // s, self.width // s)

    def _encode_batch(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        embeds, _ = self.pipe.encode_prompt(prompts, do_classifier_free_guidance=False,
                                            max_sequence_length=self.max_sequence_length, device=self.device)
        return {"encoder_hidden_states": embeds}

    def _forward(self, x, model_t, embeds):
        dt = self.denoiser.dtype
        t = model_t
        if self.expand_timesteps:  # Wan 2.2 TI2V: one timestep per token (seq = F * H/2 * W/2), as the pipeline
            _, _, f, h, w = x.shape
            p = self.denoiser.config.patch_size
            t = model_t[:, None].expand(-1, f * (h // p[1]) * (w // p[2]))
        return self.denoiser(hidden_states=x.to(dt), timestep=t,
                             encoder_hidden_states=embeds["encoder_hidden_states"].to(dt), return_dict=False)[0]

    # ---------------------------------------------------------------- VAE
    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.pipe.vae.config
        shape = (1, cfg.z_dim, 1, 1, 1)
        mean = torch.tensor(cfg.latents_mean, device=like.device, dtype=like.dtype).view(shape)
        std = torch.tensor(cfg.latents_std, device=like.device, dtype=like.dtype).view(shape)
        return mean, std

    def _vae_decode(self, latents):
        vae = self.pipe.vae
        z = latents.to(next(vae.parameters()).dtype)
        mean, std = self._stats(z)
        return vae.decode(z * std + mean, return_dict=False)[0]

    def _vae_encode(self, video, generator):
        dist = self.pipe.vae.encode(video).latent_dist
        z = dist.mode() if generator is None else dist.sample(generator)
        mean, std = self._stats(z)
        return (z - mean) / std
