"""InstructVideo: reward fine-tuning of a video generator as *editing* (docs/algorithms.md#instructvideo).

Source: Yuan et al., "InstructVideo: Instructing Video Diffusion Models with Human Feedback", CVPR 2024
(arXiv 2312.12490) Sec. 3; official ``ali-vilab/VGen``: ``tools/train/train_t2v_instructvideo_entrance.py`` (training
step), ``tools/modules/diffusions/diffusion_ddim.py`` (``ddim_sample_loop_partial``, the partial chain with
truncated backprop), ``utils/reward/reward.py`` (SegVR + TAR) and the InstructVideo config
(``..._Partial06_Trunc1_..._ddim20.yaml``).

Per optimizer step, for prompts ``c`` and their videos ``x0``:

1. ``x0`` is a real clip of the prompt (the paper's ``reward_source='gt'``: WebVid clips; here ``source=NAME``, a
   registered media source of :mod:`rewardflow.io.media_sources`, e.g. the toy world's ``toy``, which renders the
   caption's clip) or a sample of the current model (``source="sample"``);
2. editing mode: noise it with the forward process to the grid point ``t0`` (``starting_partial = 0.6`` of the
   chain: t = 551 of 20 DDIM steps) with ``eps + offset_noise * eps_offset``, where ``eps_offset`` is constant over
   the spatial axes (VGen's temporal offset noise, 0.1), and run the remaining part of the chain
   (:meth:`Generator.sample` with ``x0, t0``; no sampling loop here) with the generator's classifier-free
   guidance (the trainer key ``guidance_scale``; VGen ``guide_scale`` 3.0);
3. only the last ``k`` steps carry gradients (``trunc_backprop_timestep = 1``), each checkpointed;
4. the reward is the segmental video reward with temporal attenuation (``segmental(<image reward>)``,
   :mod:`rewardflow.rewards.segmental`): ``R = (1/S) sum_s gamma_{f_s} r(frame_{f_s}, c)``, or any differentiable
   video reward (``toy_video``);
5. ``loss = mean_batch(1 - R)`` (docs/algorithms.md#instructvideo-loss). ``segmental(...)`` with ``normalize=True`` gives the weighted-mean form.

Frame-subset decoding (``frame_subset``, on by default): with a segmental reward only the ``S`` frames it reads are
decoded (``generator.decode(latents, frames=idx)``), which is exactly equal to slicing a full decode but keeps
activation memory proportional to ``S`` instead of ``F`` for a frame-wise decoder.

A black-box reward is refused at construction (the loss backpropagates through it).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

from rewardflow.align.method import Method, register_method
from rewardflow.config import option
from rewardflow.io.media_sources import get_media_source, media_source_names
from rewardflow.rewards.base import finite_mask
from rewardflow.rewards.segmental import SegmentalVideoReward, tar_weights


@dataclass
class InstructVideoConfig:
    t0: float = option(0.6, "starting_partial: fraction of the chain the video is noised to (1 = pure noise)")
    k: int = option(1, "trunc_backprop_timestep: last sampler steps with gradients")
    source: str = option("sample", "'sample': the model's own video; else a registered media source of real clips "
                                   "(rewardflow.io.media_sources; the toy world's 'toy' renders the caption)")
    offset_noise: float = option(0.1, "temporal offset noise added to the editing noise (VGen noise_strength)")
    frame_subset: bool = option(True, "decode only the frames a segmental reward reads")
    loss_scale: float = option(1.0, "loss = loss_scale * mean(1 - R)")
    checkpoint: bool = option(True, "per-step gradient checkpointing of the steps with gradients")

    def __post_init__(self) -> None:
        if not 0.0 < self.t0 <= 1.0:
            raise ValueError(f"t0 must be in (0, 1] (fraction of the chain to noise to; official 0.6), got {self.t0}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1 (the number of last sampler steps with gradients), got {self.k}")
        if self.offset_noise < 0:
            raise ValueError(f"offset_noise must be >= 0, got {self.offset_noise}")


def segmental_parts(reward) -> tuple[Any, Any] | None:
    """``(image_reward, segmental_reward)`` if ``reward`` is a SegVR/TAR wrapper, else None."""
    return (reward.image_reward, reward) if isinstance(reward, SegmentalVideoReward) else None


def segmental_subset_reward(gen, latents: torch.Tensor, prompts: list[str], reward, num_frames: int) -> torch.Tensor:
    """The segmental reward of ``decode(latents)`` computed from the ``S`` selected frames only.

    Equal to ``reward(gen.decode(latents), prompts)`` for the same frame selection (same TAR weights
    ``exp(-lam |f - floor(F/2)|)`` over the full clip length ``F``, same ``1/S`` or weighted-mean normalisation)."""
    idx = reward.select(num_frames)
    frames = gen.decode(latents, frames=idx)  # [B, S, 3, H, W]
    B, S = frames.shape[:2]
    w = tar_weights(idx, num_frames, reward.lam).to(frames.device)
    r = reward.image_reward(frames.flatten(0, 1), [p for p in prompts for _ in range(S)]).view(B, S)
    return (r * w).sum(1) / (w.sum() if reward.normalize else S)


def _num_frames(gen) -> int:
    n = getattr(gen, "num_frames", None)
    if n is None:
        raise ValueError(f"{type(gen).__name__} has no num_frames; frame_subset needs a video adapter")
    return int(n)


def _decode_accepts_frames(gen) -> bool:
    return "frames" in inspect.signature(gen.decode).parameters


@register_method("instructvideo")
class InstructVideo(Method):
    """InstructVideo reward fine-tuning (editing mode, truncated backprop, SegVR + TAR, loss 1 - R)."""

    config_class = InstructVideoConfig
    needs_reward_grad = True

    def __init__(self, config: InstructVideoConfig, ctx):
        super().__init__(config, ctx)  # refuses a black-box reward (require_differentiable)
        if config.source != "sample" and config.source not in media_source_names():
            raise ValueError(f"source must be 'sample' or a registered media source "
                             f"({', '.join(media_source_names()) or 'none'}), got {config.source!r}")
        gen, reward = ctx.generator, ctx.reward
        if getattr(gen, "modality", "image") == "video" and getattr(reward, "modality", "image") != "video":
            raise ValueError(f"instructvideo on a video generator needs a video reward; {reward.name!r} is an image "
                             f"reward: lift it with the segmental wrapper, e.g. reward: segmental({reward.name})")
        if config.source != "sample" and getattr(gen, "modality", "image") != "video":
            raise ValueError(f"source={config.source!r} supplies real video clips and needs a video generator")
        self._subset = (config.frame_subset and segmental_parts(reward) is not None
                        and _decode_accepts_frames(gen))

    # ------------------------------------------------------------------ data
    def _real_videos(self, prompts: list[str]) -> torch.Tensor:
        gen = self.ctx.generator
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self.ctx.rng))
        videos = get_media_source(self.config.source)(prompts, _num_frames(gen), seed)
        return gen.encode_videos(videos.to(gen.device))

    def edit_noise(self, batch: int) -> torch.Tensor:
        """Gaussian noise plus ``offset_noise`` times a draw constant over the two spatial axes."""
        gen, rng = self.ctx.generator, self.ctx.rng
        noise = gen.initial_noise(batch, rng)
        if self.config.offset_noise > 0:
            shape = (batch, *gen.latent_shape[:-2], 1, 1)
            noise = noise + self.config.offset_noise * torch.randn(shape, generator=rng).to(noise.device, noise.dtype)
        return noise

    def collect(self, prompts: list[str], step: int) -> list[dict[str, Any]]:
        gen = self.ctx.generator
        if self.config.source != "sample":
            x0 = self._real_videos(list(prompts))
        else:
            cond = gen.encode_prompts(list(prompts))
            x0 = gen.sample(cond, self.ctx.sample_steps, generator=self.ctx.rng).final
        return [{"prompts": list(prompts), "x0": x0.detach(), "noise": self.edit_noise(len(prompts))}]

    # ------------------------------------------------------------------ loss
    def reward_of(self, latents: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        gen, reward = self.ctx.generator, self.ctx.reward
        if self._subset:
            return segmental_subset_reward(gen, latents, prompts, reward, _num_frames(gen))
        return reward(gen.decode(latents), prompts)

    def loss(self, batch: dict[str, Any], step: int):
        c, gen, ctx = self.config, self.ctx.generator, self.ctx
        prompts = batch["prompts"]
        cond = gen.encode_prompts(prompts)
        traj = gen.sample(cond, ctx.sample_steps, noise=batch["noise"], x0=batch["x0"], t0=c.t0, grad="last_k",
                          k=c.k, checkpoint=c.checkpoint, generator=ctx.rng)
        r = self.reward_of(traj.final, prompts)
        ok = finite_mask(r.detach())
        diag = {"reward_mean": float(r.detach()[ok].mean()) if ok.any() else float("nan"),
                "k": float(len(traj.grad_steps)), "edit_steps": float(len(traj.timesteps) - 1)}
        ctx.log({"reward_mean": diag["reward_mean"], "nonfinite_rewards": float((~ok).sum())})
        if not ok.any():
            return r.sum() * float("nan"), diag  # non-finite: the trainer skips the step
        return c.loss_scale * (1.0 - r[ok]).mean(), diag
