"""Segmental video reward with temporal attenuation: any image reward lifted to video (InstructVideo).

Source: InstructVideo (Yuan et al., CVPR 2024, arXiv 2312.12490) Sec. 3 "Segmental Video Reward" (SegVR) and
"Temporally Attenuated Reward" (TAR); official ``ali-vilab/VGen`` ``utils/reward/reward.py``
(``DiffRewardModel.reward_scorer``), defaults from ``tools/modules/config.py`` and the InstructVideo config
(16 frames, ``segments = 4``, ``selection_method = 'TSN'``, ``lambda_TAR = 1.0``).

For a video of ``F`` frames:

1. split it into ``S`` equal segments and pick one frame per segment (:func:`rewardflow.io.video.tsn_indices`):
   ``selection="tsn"`` a uniformly random frame inside the segment (one draw per call, shared by the batch),
   ``selection="first"`` the segment's first frame (VGen ``fixed_first``);
2. score the ``S`` frames with the image reward (one batched call of ``B * S`` images, so the cost depends on
   ``S``, not on ``F``);
3. weight frame ``f`` by ``gamma_f = exp(-lambda * |f - floor(F / 2)|)`` (frames near the middle count most) and
   average: ``R = (1 / S) * sum_s gamma_{f_s} * r_{f_s}``. The weights are **not** renormalised in the official
   code; ``normalize=True`` gives the weighted mean ``sum gamma r / sum gamma`` instead. ``lambda = 0`` is the
   plain SegVR mean.

Every head of the image reward is aggregated the same way. The last call's frame indices, weights and per-frame
scores are kept in :attr:`SegmentalVideoReward.last` for diagnostics. Differentiable when the image reward is.

Registry: ``load_reward("segmental(<image reward>)", segments=4, lam=1.0, selection="tsn", inner_kwargs={...})``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rewardflow.io.video import tsn_indices
from rewardflow.rewards.base import Reward, load_reward, register_reward_wrapper

SELECTIONS = ("tsn", "first")


def tar_weights(indices: torch.Tensor, num_frames: int, lam: float = 1.0) -> torch.Tensor:
    """Temporally attenuated weights ``exp(-lam * |f - floor(F / 2)|)`` for frame indices ``f`` of ``F`` frames."""
    return torch.exp(-float(lam) * (indices.float() - num_frames // 2).abs())


@dataclass
class SegmentalDiagnostics:
    indices: torch.Tensor  # [S] frame indices used
    weights: torch.Tensor  # [S] TAR weights
    frame_scores: dict[str, torch.Tensor]  # head -> [B, S] per-frame image-reward scores (detached)


class SegmentalVideoReward(Reward):
    """Lift an image reward to ``[B, T, 3, H, W]`` videos (SegVR + TAR, see the module docstring)."""

    modality = "video"

    def __init__(self, image_reward: Reward, segments: int = 4, lam: float = 1.0, selection: str = "tsn",
                 normalize: bool = False, seed: int | None = None):
        super().__init__()
        if getattr(image_reward, "modality", "image") != "image":
            raise ValueError(f"segmental(...) lifts an image reward; {image_reward.name!r} is a "
                             f"{image_reward.modality} reward")
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        if segments < 1:
            raise ValueError(f"segments must be >= 1, got {segments}")
        self.image_reward = image_reward
        self.segments, self.lam, self.selection, self.normalize = int(segments), float(lam), selection, normalize
        self.name = f"segmental({image_reward.name})"
        self.differentiable = bool(image_reward.differentiable)
        self.heads = tuple(image_reward.heads)
        self.primary_head = image_reward.primary_head
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.last: SegmentalDiagnostics | None = None

    def select(self, num_frames: int) -> torch.Tensor:
        """The frame indices for a video of ``num_frames`` frames (random per call with ``selection="tsn"``)."""
        return tsn_indices(num_frames, self.segments, random=self.selection == "tsn", generator=self.generator)

    def score_heads(self, media, prompts):
        B, F = media.shape[:2]
        if F < self.segments:
            raise ValueError(f"{self.name}: a {F}-frame video cannot be split into {self.segments} segments "
                             "(use fewer segments)")
        idx = self.select(F)
        w = tar_weights(idx, F, self.lam).to(media.device)
        frames = media[:, idx.to(media.device)].flatten(0, 1)  # [B*S, 3, H, W]
        per_frame = self.image_reward.all_heads(frames, [p for p in prompts for _ in range(len(idx))])
        out, diag = {}, {}
        for k, v in per_frame.items():
            v = v.view(B, len(idx))
            diag[k] = v.detach()
            out[k] = (v * w).sum(1) / (w.sum() if self.normalize else len(idx))
        self.last = SegmentalDiagnostics(idx, w.detach().cpu(), diag)
        return out


@register_reward_wrapper("segmental", modality="video", takes="image",
                         description="InstructVideo SegVR + TAR: an image reward on a few frames of each video "
                                     "segment, weighted over time (options: segments, lam, selection)")
def _segmental(inner: str, segments: int = 4, lam: float = 1.0, selection: str = "tsn", normalize: bool = False,
               seed: int | None = None, inner_kwargs: dict | None = None) -> SegmentalVideoReward:
    """``segmental(<image reward>)``: InstructVideo SegVR + TAR over any registered image reward."""
    return SegmentalVideoReward(load_reward(inner, **(inner_kwargs or {})), segments=segments, lam=lam,
                                selection=selection, normalize=normalize, seed=seed)
