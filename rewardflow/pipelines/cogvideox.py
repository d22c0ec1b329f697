"""Adapter for CogVideoX 1.0 / 1.5 text-to-video (``diffusers.CogVideoXPipeline``): expert transformer, v-prediction.

Mirrors ``diffusers/pipelines/cogvideo/pipeline_cogvideox.py``:

* text: T5 last hidden state padded to ``max_sequence_length`` (226, = ``transformer.config.max_text_seq_length``);
  the unconditional branch is the empty negative prompt.
* latents ``[B, F, C, H/8, W/8]`` (frames before channels, the transformer's layout), ``F = (num_frames - 1) // 4 + 1``;
  CogVideoX 1.5 (``patch_size_t=2``) pads F up to a multiple of ``patch_size_t`` with extra *leading* latent frames,
  dropped before decoding, as the pipeline does.
* rotary position embeddings: computed by the pipeline's own ``_prepare_rotary_positional_embeddings`` for the
  video size (CogVideoX 1.0 "crop" grid / 1.5 "slice" grid), once per latent shape.
* schedule: DDIM on the scheduler's training schedule (``CogVideoXDDIMScheduler``: scaled-linear betas, SNR shift 3
  ``alpha_bar / (3 - 2 alpha_bar)``, zero terminal SNR, "trailing" spacing; CogVideoX paper, Sec. 3). The deterministic
  DDIM update of that scheduler, ``x' = a x + b x0_hat`` with ``a = sqrt((1-ab')/(1-ab))``, is the eta = 0 DDIM
  step of :meth:`Generator.step` (Song et al. 2021, eq. 12) rewritten; eta > 0 gives the DDPO-style Gaussian policy.
  A ``CogVideoXDPMScheduler`` (CogVideoX-5b) is replaced by the DDIM one with the same config (installed in ``pipe``
  too, so ``pipe(...)`` and :meth:`Generator.sample` run the same chain).
* guidance: true CFG on [uncond, cond] (``guidance_scale`` 6.0; the pipeline's optional ``use_dynamic_cfg`` is off).
* VAE (``AutoencoderKLCogVideoX``): ``vae.decode(z / scaling_factor)``; encode ``posterior * scaling_factor``.
  The decoder runs in chunks of ``vae.num_latent_frames_batch_size`` (2) latent frames, the first chunk taking the
  ``F % 2`` remainder too, with a causal conv cache between chunks and GroupNorm statistics *within* a chunk. A
  prefix of ``E`` latent frames with ``E = F (mod 2)`` and ``E >= 2 + F % 2`` is split into the same leading chunks,
  so its pixel frames ``0 .. 4(E-1)`` are identical to the full decode (:meth:`CogVideoXGenerator.decode_prefix`);
  any other prefix is not (GroupNorm would see a different chunk).
"""

from __future__ import annotations

import os

import torch

from rewardflow.pipelines._video import VideoGenerator
from rewardflow.pipelines.base import StepOutput
from rewardflow.pipelines.loading import load_diffusers_pipeline, note_sampler_substitution
from rewardflow.pipelines.registry import register_generator


def cogvideox_ddim_from(scheduler):
    """The pipeline's scheduler as a ``CogVideoXDDIMScheduler`` (same config; DPM -> DDIM for CogVideoX-5b)."""
    from diffusers import CogVideoXDDIMScheduler  # lazy: diffusers is a heavy import

    if isinstance(scheduler, CogVideoXDDIMScheduler):
        return scheduler
    note_sampler_substitution(type(scheduler).__name__, "CogVideoXDDIMScheduler",
                              "the same config; training, log-probs and sampling all use DDIM steps")
    return CogVideoXDDIMScheduler.from_config(scheduler.config)


@register_generator("cogvideox", pipeline_classes=("CogVideoXPipeline",),
                    description="CogVideoX 1.0 / 1.5 text-to-video (v-prediction DDIM, T5, 3D VAE)")
class CogVideoXGenerator(VideoGenerator):
    """CogVideoX-2b / -5b / 1.5-5b. Latents ``[B, F, C, H/8, W/8]``; :meth:`decode` gives ``[B, T, 3, H, W]``."""

    pipeline_class = "CogVideoXPipeline"
    # the targets of diffusers' examples/cogvideo/train_cogvideox_lora.py
    default_lora_targets = ("to_q", "to_k", "to_v", "to_out.0")
    shard_block_classes = ("CogVideoXBlock",)

    def __init__(self, pipe, guidance_scale: float = 6.0, num_frames: int = 49, height: int = 480,
                 width: int = 720, max_sequence_length: int | None = None):
        # defaults: CogVideoXPipeline.__call__ (49 frames, 480x720, guidance 6.0, text length 226)
        self.temporal_ratio = int(pipe.vae_scale_factor_temporal)
        self.spatial_ratio = int(pipe.vae_scale_factor_spatial)
        cfg = pipe.transformer.config
        self._init_video(pipe, guidance_scale, num_frames, height, width,
                         max_sequence_length or cfg.max_text_seq_length, self.spatial_ratio * int(cfg.patch_size))
        self.scheduler = cogvideox_ddim_from(pipe.scheduler)
        pipe.scheduler = self.scheduler
        self.parametrization = self.scheduler.config.prediction_type
        if self.parametrization not in ("epsilon", "v_prediction"):
            raise ValueError(f"unsupported prediction_type {self.parametrization!r} for CogVideoX")
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        # CogVideoX 1.5: latent frames padded to a multiple of patch_size_t (leading frames, dropped at decode)
        pt = cfg.patch_size_t
        f = super().latent_frames
        self.pad_frames = 0 if pt is None or f % pt == 0 else pt - f % pt
        self._rotary: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._ddim_prev: dict[tuple[float, float], float] = {}

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: torch.dtype | str = torch.float32,
                        device: str | torch.device = "cpu", guidance_scale: float = 6.0, num_frames: int = 49,
                        height: int = 480, width: int = 720, max_sequence_length: int | None = None,
                        **load_options) -> CogVideoXGenerator:
        """Load a ``CogVideoXPipeline`` directory or hub id (``THUDM/CogVideoX-2b``, ``THUDM/CogVideoX-5b``)."""
        if path is None:
            raise ValueError(f"{cls.__name__} needs a model directory or hub id (e.g. THUDM/CogVideoX-2b)")
        pipe = load_diffusers_pipeline(cls.pipeline_class, path, dtype=dtype, device=device, **load_options)
        return cls(pipe, guidance_scale=guidance_scale, num_frames=num_frames, height=height, width=width,
                   max_sequence_length=max_sequence_length)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        s = self.spatial_ratio
        return (self.latent_frames + self.pad_frames, int(self.denoiser.config.in_channels),
                self.height // s, self.width // s)

    def _latent_time_dim(self) -> int:
        return 1

    # ---------------------------------------------------------------- text, network
    def _encode_batch(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        embeds, _ = self.pipe.encode_prompt(prompts, do_classifier_free_guidance=False,
                                            max_sequence_length=self.max_sequence_length, device=self.device)
        return {"encoder_hidden_states": embeds}

    def _rotary_emb(self, num_latent_frames: int, device: torch.device):
        if not self.denoiser.config.use_rotary_positional_embeddings:
            return None
        key = (num_latent_frames, self.height, self.width, str(device))
        if key not in self._rotary:
            self._rotary[key] = self.pipe._prepare_rotary_positional_embeddings(self.height, self.width,
                                                                                num_latent_frames, device)
        return self._rotary[key]

    def _forward(self, x, model_t, embeds):
        dt = self.denoiser.dtype
        # CogVideoXDDIMScheduler.scale_model_input is the identity
        return self.denoiser(hidden_states=x.to(dt), encoder_hidden_states=embeds["encoder_hidden_states"].to(dt),
                             timestep=model_t, image_rotary_emb=self._rotary_emb(x.shape[1], x.device),
                             return_dict=False)[0]

    # ---------------------------------------------------------------- DDIM grid
    def timesteps(self, steps: int) -> torch.Tensor:
        grid = super().timesteps(steps)
        # CogVideoXDDIMScheduler.step goes from t to t - num_train_timesteps // steps (its "prev_timestep"), which
        # differs from the next grid point when the step count does not divide 1000; keep the scheduler's target
        stride = self.num_train_timesteps // steps
        for t, t_next in zip(grid[:-1].tolist(), grid[1:].tolist()):
            self._ddim_prev[(t, t_next)] = max(t - stride, -1.0)
        return grid

    def step(self, out, x, t, t_next, *args, **kwargs) -> StepOutput:
        """:meth:`Generator.step` (DDIM, eta = ``noise_level``) towards the scheduler's own previous timestep."""
        t_next = self._ddim_prev.get((float(t), float(t_next)), float(t_next))
        return super().step(out, x, t, t_next, *args, **kwargs)

    # ---------------------------------------------------------------- VAE
    def decode_prefix(self, needed: int, total: int) -> int:
        """Smallest prefix ``E >= needed`` that the VAE splits into the same leading chunks as the full ``total``
        (``E = total (mod b)``, ``E >= b + total % b`` for chunk size ``b``), else the full latent."""
        b = int(getattr(self.pipe.vae, "num_latent_frames_batch_size", 2))
        if getattr(self.pipe.vae, "use_tiling", False) or total < b:
            return total
        rem = total % b
        e = max(needed, b + rem)
        e += (rem - e) % b
        return min(e, total)

    def decode(self, latents, frames=None):
        # drop the CogVideoX 1.5 padding frames first (the pipeline's latents[:, additional_frames:])
        return super().decode(latents[:, self.pad_frames:], frames)

    def _vae_decode(self, latents):
        vae = self.pipe.vae
        z = latents.to(next(vae.parameters()).dtype).permute(0, 2, 1, 3, 4)  # -> [B, C, F, H, W]
        return vae.decode(z / vae.config.scaling_factor, return_dict=False)[0]

    def _vae_encode(self, video, generator):
        vae = self.pipe.vae
        dist = vae.encode(video).latent_dist
        z = dist.mode() if generator is None else dist.sample(generator)
        z = (z * vae.config.scaling_factor).permute(0, 2, 1, 3, 4)  # the inverse of _vae_decode; -> [B, F, C, H, W]
        if self.pad_frames:  # CogVideoX 1.5: the leading padding frames (dropped at decode) repeat the first one
            z = torch.cat([z[:, :1].expand(-1, self.pad_frames, -1, -1, -1), z], 1)
        return z
