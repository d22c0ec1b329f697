"""The toy text-to-video rectified-flow model, packaged as a real diffusers ``DiffusionPipeline``.

Same components and text encoder as the toy image model (:mod:`rewardflow.toy.pipeline`), for clips of the toy video
world (:mod:`rewardflow.toy.video`, 4 frames of 32x32 by default):

* ``unet``: ``diffusers.UNet2DConditionModel`` on the **frames folded into channels**: every frame is
  pixel-unshuffled (32x32x3 -> 16x16x12) and the ``T`` frames are stacked along channels, so the "latent" of a clip
  is ``[T * 12, 16, 16]`` (channel ``t * 12 + c`` is channel ``c`` of frame ``t``). The first convolution mixes all
  frames, which is what lets the model make the object move coherently;
* ``text_encoder`` / ``tokenizer``: ``CLIPTextModel`` + the word-level tokenizer of the image toy over the video
  vocabulary (:data:`rewardflow.toy.video.VIDEO_VOCAB`);
* ``scheduler``: ``FlowMatchEulerDiscreteScheduler`` (shift 1).

Why frames-in-channels rather than ``UNet3DConditionModel`` (spatial + temporal convolutions and temporal
attention): measured on one (shared) CPU thread, 8 frames, batch 32, forward + backward, a tiny
``UNet3DConditionModel`` (channels 32/64, 1.7 M parameters) took 21-29 s per step, the folded
``UNet2DConditionModel`` (channels 64/96/128, 5.7 M parameters) 2.1-2.4 s; only the latter trains within the
20-minute single-core budget. Why 4 frames and a 96-channel first level: with 8 frames (96 latent channels) into a
64-channel first level the network cannot pass the noisy input through (the flow target ``eps - x0`` needs it) and
training stalled (loss 0.75 after 250 steps, samples still noise; the image toy was at 0.2); 4 frames (48 channels)
into 96 channels trains (loss 0.11 after 900 batch-24 steps, 19.6 min wall on one shared CPU thread).

``ToyVideoFlowPipeline`` reuses the image pipeline's diffusers-style sampling loop (``__call__``) unchanged: only the
latent geometry, the encode / decode maps and the vocabulary differ. ``decode_latents(latents, frames=...)``
decodes a subset of frames; it is exact (the frames are independent in pixel space), so it equals those frames of a
full decode.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

from rewardflow.toy.pipeline import ToyFlowPipeline, build_scheduler, build_text_encoder, build_tokenizer
from rewardflow.toy.video import VIDEO_VOCAB

FACTOR = 2  # pixel-unshuffle factor of every frame
DEFAULT_FRAMES = 4


def build_video_unet(frames: int = DEFAULT_FRAMES, width: int = 64, channels=(96, 96, 128),
                     image_size: int = 32) -> UNet2DConditionModel:
    c = 3 * FACTOR * FACTOR * frames
    return UNet2DConditionModel(
        sample_size=image_size // FACTOR, in_channels=c, out_channels=c, block_out_channels=tuple(channels),
        layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=width,
        norm_num_groups=16, attention_head_dim=8, class_embed_type="projection",
        projection_class_embeddings_input_dim=width)


class ToyVideoFlowPipeline(ToyFlowPipeline):
    """Text-to-video rectified flow on 8-frame 32x32 toy clips. ``pipe(prompts)`` -> videos ``[B, T, 3, H, W]`` in
    [0, 1] (``output_type="np"``: uint8 ``[B, T, H, W, 3]``)."""

    @classmethod
    def from_config_dict(cls, frames: int = DEFAULT_FRAMES, width: int = 64, channels=(96, 96, 128),
                         image_size: int = 32, seed: int = 0, parametrization: str = "flow"):
        """A freshly initialised (random) toy video pipeline."""
        scheduler = build_scheduler(parametrization)
        torch.manual_seed(seed)
        tok = build_tokenizer(list(VIDEO_VOCAB))
        return cls(build_video_unet(frames, width, channels, image_size), build_text_encoder(len(tok), width), tok,
                   scheduler)

    # -- geometry ---------------------------------------------------------------------------------------
    @property
    def factor(self) -> int:
        return FACTOR

    @property
    def channels_per_frame(self) -> int:
        return 3 * FACTOR * FACTOR

    @property
    def num_frames(self) -> int:
        return self.unet.config.in_channels // self.channels_per_frame

    def _frame_index(self, frames: Sequence[int] | None) -> list[int] | None:
        if frames is None:
            return None
        idx = [int(f) for f in (frames.tolist() if isinstance(frames, torch.Tensor) else frames)]
        bad = [f for f in idx if not 0 <= f < self.num_frames]
        if bad or not idx:
            raise ValueError(f"frame indices must be a non-empty subset of 0..{self.num_frames - 1}, got {idx}")
        return idx

    def encode_videos(self, videos: torch.Tensor) -> torch.Tensor:
        """``[B, T, 3, H, W]`` in [0, 1] -> latents ``[B, T*12, H/2, W/2]`` (exact inverse of ``decode_latents``)."""
        if videos.ndim != 5 or videos.shape[1] != self.num_frames or videos.shape[2] != 3:
            raise ValueError(f"expected videos [B, {self.num_frames}, 3, H, W] in [0, 1], got {tuple(videos.shape)}")
        B, T = videos.shape[:2]
        lat = F.pixel_unshuffle(videos.flatten(0, 1) * 2 - 1, FACTOR)
        return lat.reshape(B, T * lat.shape[1], *lat.shape[-2:])

    encode_images = encode_videos

    def decode_latents(self, latents: torch.Tensor, frames: Sequence[int] | None = None) -> torch.Tensor:
        """Latents -> videos ``[B, T', 3, H, W]`` in [0, 1]; ``frames``: decode only these frame indices."""
        B = latents.shape[0]
        lat = latents.reshape(B, self.num_frames, self.channels_per_frame, *latents.shape[-2:])
        idx = self._frame_index(frames)
        if idx is not None:
            lat = lat[:, idx]
        vid = F.pixel_shuffle(lat.flatten(0, 1), FACTOR) * 0.5 + 0.5
        return vid.clamp(0, 1).reshape(B, lat.shape[1], *vid.shape[1:])

    @torch.no_grad()
    def __call__(self, prompt, num_inference_steps: int = 8, guidance_scale: float = 1.0, generator=None,
                 latents=None, output_type: str = "pt"):
        videos = super().__call__(prompt, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                  generator=generator, latents=latents, output_type="pt")
        if output_type == "np":
            return (videos.permute(0, 1, 3, 4, 2).cpu().numpy() * 255).round().astype(np.uint8)
        return videos
