"""Shared plumbing of the text-to-video adapters (Wan 2.1 in ``wan.py``, CogVideoX in ``cogvideox.py``, LTX-Video in
``ltx.py``). Not an adapter itself (the leading underscore keeps the registry from importing it as one).

What is common to the three families lives here, once:

* video size: ``num_frames`` pixel frames and their latent count, ``(num_frames - 1) // r + 1`` for a temporal VAE
  compression ratio ``r`` (4 for Wan 2.1 and CogVideoX, 8 for LTX-Video); each VAE maps latent frame 0 to pixel
  frame 0 and latent frame ``k >= 1`` to pixel frames ``r(k-1)+1 .. rk``.
* the per-prompt text-encoder cache (embeddings are computed once per distinct prompt, no grad).
* ``decode(latents, frames=None) -> [B, T, 3, H, W]`` in [0, 1], differentiable, with a frame subset: only the
  shortest *prefix* of latent frames whose decode provably equals the full decode on the requested pixel frames is
  decoded (:meth:`VideoGenerator.decode_prefix`, one rule per VAE), then the requested frames are sliced out.
* ``encode(videos)`` (editing mode, InstructVideo / SDEdit): ``[B, T, 3, H, W]`` in [0, 1] -> latents.

The image helpers ``vae_decode`` / ``vae_encode`` of :mod:`rewardflow.pipelines.vae` assume images
(4-D latents, ``[B, 3, H, W]`` pixels), so the video versions are here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rewardflow.pipelines.base import Conditioning, Generator, prompt_list


def latent_frame_count(num_frames: int, ratio: int) -> int:
    """Latent frames of a ``num_frames`` video under temporal compression ``ratio`` (first frame kept alone)."""
    return (int(num_frames) - 1) // int(ratio) + 1


def latent_index_of(frame: int, ratio: int) -> int:
    """The latent frame whose decode yields pixel frame ``frame`` (0 -> 0; ``r(k-1)+1 .. rk`` -> k)."""
    return 0 if frame <= 0 else (int(frame) + ratio - 1) // ratio


class VideoGenerator(Generator):
    """Base of the video adapters. Subclasses set ``temporal_ratio`` / ``spatial_ratio`` in ``__init__`` and
    implement ``_encode_batch``, ``_forward``, ``latent_shape``, ``_vae_decode`` (normalized latents in the
    adapter's layout -> ``[B, 3, T, H, W]`` in [-1, 1]), ``_vae_encode`` and ``decode_prefix``."""

    modality = "video"
    lora_component = "transformer"
    temporal_ratio: int = 4
    spatial_ratio: int = 8

    def _init_video(self, pipe, guidance_scale: float, num_frames: int, height: int, width: int,
                    max_sequence_length: int, pixel_multiple: int) -> None:
        self.pipe = pipe
        self.denoiser = pipe.transformer
        self.guidance_scale = float(guidance_scale)
        self.max_sequence_length = int(max_sequence_length)
        self.height, self.width, self.num_frames = int(height), int(width), int(num_frames)
        if self.height % pixel_multiple or self.width % pixel_multiple:
            raise ValueError(f"height and width must be multiples of {pixel_multiple} for {type(self).__name__}, "
                             f"got {self.height}x{self.width}")
        if self.num_frames < 1 or (self.num_frames - 1) % self.temporal_ratio:
            raise ValueError(f"num_frames - 1 must be a multiple of the VAE's temporal compression "
                             f"{self.temporal_ratio} for {type(self).__name__}, got num_frames={self.num_frames} "
                             f"(e.g. {(self.num_frames // self.temporal_ratio) * self.temporal_ratio + 1})")
        for name in ("text_encoder", "vae"):
            module = getattr(pipe, name, None)
            if module is not None:
                module.requires_grad_(False).eval()
        self._cache: dict[str, dict[str, torch.Tensor]] = {}

    @property
    def device(self) -> torch.device:
        return self.pipe._execution_device

    @property
    def dtype(self) -> torch.dtype:
        # ModelMixin.dtype: the compute dtype (Wan keeps a few norm / embedding weights in fp32 under bf16)
        return self.denoiser.dtype

    @property
    def latent_frames(self) -> int:
        return latent_frame_count(self.num_frames, self.temporal_ratio)

    # ---------------------------------------------------------------- text
    def _encode_batch(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        missing = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if missing:
            emb = self._encode_batch(missing)
            for i, p in enumerate(missing):
                self._cache[p] = {k: v[i] for k, v in emb.items()}
        return {k: torch.stack([self._cache[p][k] for p in prompts]) for k in self._cache[prompts[0]]}

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """Text embeddings cached per prompt; the unconditional branch is the empty prompt (the pipelines'
        negative prompt when none is given). Guidance is applied inside :meth:`Generator.predict`."""
        prompts = prompt_list(prompts)
        return Conditioning(prompts, self._encode(prompts), self._encode([""] * len(prompts)))

    def clear_prompt_cache(self) -> None:
        self._cache.clear()

    # ---------------------------------------------------------------- VAE
    def _vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _vae_encode(self, video: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError

    def _latent_time_dim(self) -> int:
        """Index of the frame axis in a batched latent (2 for ``[B, C, F, H, W]``, 1 for ``[B, F, C, H, W]``)."""
        return 2

    def decode_prefix(self, needed: int, total: int) -> int:
        """How many leading latent frames to decode so that pixel frames of latent frames ``< needed`` equal the
        full decode of ``total`` latent frames. Default: a causal VAE that decodes one latent frame at a time
        (the prefix is enough)."""
        return needed

    def _frame_indices(self, frames, total_pixel: int) -> list[int]:
        idx = [int(f) for f in (frames.tolist() if torch.is_tensor(frames) else frames)]
        if not idx:
            raise ValueError("decode(frames=...) needs at least one frame index")
        bad = [f for f in idx if not -total_pixel <= f < total_pixel]
        if bad:
            raise ValueError(f"frame indices {bad} out of range for a {total_pixel}-frame video")
        return [f % total_pixel for f in idx]

    def decode(self, latents: torch.Tensor, frames: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """Latents -> video ``[B, T, 3, H, W]`` in [0, 1], differentiable.

        ``frames``: pixel-frame indices to return (e.g. the frames a reward reads). Only the latent prefix given by
        :meth:`decode_prefix` is decoded, so the result equals ``decode(latents)[:, frames]`` (the tests check this)
        while the VAE runs on fewer frames when the requested frames are early in the clip.
        """
        tdim = self._latent_time_dim()
        if latents.ndim != 5:
            raise ValueError(f"{type(self).__name__}.decode expects 5-D latents [B, *{self.latent_shape}], got "
                             f"{tuple(latents.shape)}")
        total = latents.shape[tdim]
        r = self.temporal_ratio
        if frames is not None:
            idx = self._frame_indices(frames, (total - 1) * r + 1)
            keep = self.decode_prefix(latent_index_of(max(idx), r) + 1, total)
            latents = latents.narrow(tdim, 0, keep)
        video = self._vae_decode(latents)  # [B, 3, T, H, W] in [-1, 1]
        # VideoProcessor.postprocess_video: per frame (x / 2 + 0.5).clamp(0, 1), frames first
        video = (video.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 1, 3, 4)
        return video if frames is None else video[:, idx]

    def encode(self, videos: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Videos ``[B, T, 3, H, W]`` in [0, 1] -> normalized latents in this adapter's layout (posterior mode, or
        a posterior sample when ``generator`` is given); ``T - 1`` must be a multiple of the temporal ratio."""
        if videos.ndim != 5 or videos.shape[2] != 3:
            raise ValueError(f"encode expects videos [B, T, 3, H, W] in [0, 1], got {tuple(videos.shape)}")
        t = videos.shape[1]
        if (t - 1) % self.temporal_ratio:
            raise ValueError(f"encode: T - 1 must be a multiple of {self.temporal_ratio} for "
                             f"{type(self).__name__}, got T={t}")
        vae = self.pipe.vae
        x = (videos.to(self.device, next(vae.parameters()).dtype) * 2 - 1).permute(0, 2, 1, 3, 4)
        return self._vae_encode(x, generator).to(self.dtype)

    # the names the methods use for media -> latents (editing mode, preference pairs on disk: align/dpo.py)
    encode_videos = encode
    encode_images = encode

    def enable_gradient_checkpointing(self, vae: bool = False) -> None:
        """Checkpoint the transformer blocks (and, with ``vae=True``, the VAE's blocks where diffusers supports it)."""
        super().enable_gradient_checkpointing()
        v = self.pipe.vae
        if vae and getattr(v, "_supports_gradient_checkpointing", False):
            v.enable_gradient_checkpointing()
