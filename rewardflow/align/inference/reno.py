"""ReNO: reward-based initial-noise optimization (Eyring et al., NeurIPS 2024; docs/algorithms.md#reno).

The generator is frozen; the initial noise eps is the parameter:

    eps* = argmin_eps  sum_k w_k * L_k(G(eps, c), c)  +  w_reg * ( 1/2 ||eps||^2 - (d - 1) log ||eps|| )

``L_k = -r_k`` (ReNO writes "offset - score"; offsets do not change gradients or the argmin). The regularizer is the
negative log-density of ||eps|| under the chi distribution with d = eps.numel() degrees of freedom (up to a
constant), computed in fp32, which keeps eps on the Gaussian shell of radius ~sqrt(d). Defaults from the official
repo (ExplainableML/ReNO): SGD Nesterov momentum 0.9, lr 5, 50 iterations (the last does no step), gradient-norm
clip 0.1 on the noise, ``w_reg = 0.01``; the best iterate by *reward* loss (regularizer excluded) is returned,
which may be iteration 0. Optimizes a batch of prompts at once with per-sample gradient clipping and per-sample
best iterates, which is the same as running each prompt on its own.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from rewardflow.config import option
from rewardflow.pipelines.base import Generator
from rewardflow.rewards.base import Reward, require_differentiable

_AUTOCAST = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class ReNOConfig:
    iterations: int = option(50, "optimization iterations (the last only evaluates, as the official loop)")
    lr: float = option(5.0, "learning rate on the noise")
    optimizer: str = option("sgd", "'sgd' (Nesterov, momentum 0.9) or 'adam' (eps 1e-2)")
    grad_clip: float = option(0.1, "per-sample gradient-norm clip on the noise")
    reg_weight: float = option(0.01, "weight of the noise-norm regularizer (negative chi log-density)")
    steps: int = option(1, "sampler steps of the (one- or few-step) generator")
    checkpoint: bool = option(True, "per-step gradient checkpointing of the generator")
    reward_checkpointing: bool = option(False, "gradient checkpointing inside the reward backbones (HPS/CLIP towers)")
    autocast: str = option("none", "'none', 'fp16' or 'bf16': mixed precision for the generator and rewards")
    seed: int = option(0, "seed of the initial noise when none is given")

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"ReNOConfig.optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.autocast not in _AUTOCAST:
            raise ValueError(f"ReNOConfig.autocast must be one of {list(_AUTOCAST)}, got {self.autocast!r}")
        if self.iterations < 1:
            raise ValueError(f"ReNOConfig.iterations must be >= 1 (iteration 0 scores the initial noise), "
                             f"got {self.iterations}")
        if self.steps < 1:
            raise ValueError(f"ReNOConfig.steps must be >= 1, got {self.steps}")
        for name in ("lr", "grad_clip"):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"ReNOConfig.{name} must be a positive number, got {v}")
        if not (self.reg_weight >= 0 and math.isfinite(self.reg_weight)):
            raise ValueError(f"ReNOConfig.reg_weight must be >= 0, got {self.reg_weight}")


# ReNO's paper reward set and weights (docs/algorithms.md#reno-defaults): losses "offset - score" with these weights; our rewards
# return the scores (HPS cos, standardized IR, PickScore s*cos, CLIP s*cos), so the same weights apply to them.
RENO_PAPER_REWARDS = "hpsv2.1:5,imagereward:1,pickscore:0.05,clip:0.01"
# ReNO's CLIP term is logit_scale.exp() * cos on laion CLIP-ViT-H-14 (ExplainableML/ReNO rewards/clip.py), not the
# plain cosine of the `clip` reward's default OpenAI ViT-B/32: these options make the `clip` entry that model.
# A local copy: a transformers directory of the same repo, or its open_clip_pytorch_model.bin (open_clip ViT-H-14).
RENO_PAPER_REWARD_KWARGS = {"clip": {"path": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "model": "ViT-H-14",
                                     "logit_scale": True}}


def enable_reward_checkpointing(reward: torch.nn.Module) -> int:
    """Turn on gradient checkpointing in every backbone inside ``reward`` that supports it (open_clip towers:
    ``set_grad_checkpointing``; transformers models: ``gradient_checkpointing_enable``). Returns how many."""
    n = 0
    for m in reward.modules():
        if hasattr(m, "gradient_checkpointing_enable") and getattr(m, "supports_gradient_checkpointing", False):
            m.gradient_checkpointing_enable()
            n += 1
        elif hasattr(m, "set_grad_checkpointing") and m is not reward:
            m.set_grad_checkpointing(True)
            n += 1
    return n


def chi_norm_reg(noise: torch.Tensor) -> torch.Tensor:
    """Per-sample negative chi log-density of the noise norm (constants dropped): 1/2 r^2 - (d - 1) log r."""
    x = noise.float().flatten(1)
    d = x.shape[1]
    r = x.norm(dim=1)
    return 0.5 * r**2 - (d - 1) * torch.log(r)


@dataclass
class ReNOResult:
    images: torch.Tensor  # best iterate, [B, 3, H, W] in [0, 1]
    initial_images: torch.Tensor
    noise: torch.Tensor  # best noise
    best_reward: torch.Tensor  # [B]
    initial_reward: torch.Tensor  # [B]
    best_iteration: torch.Tensor  # [B]
    curve: list[list[float]] = field(default_factory=list)  # per iteration: reward per sample
    seconds: float = 0.0


class ReNO:
    """``ReNO(gen, reward, cfg).optimize(prompts, noise)``."""

    def __init__(self, generator: Generator, reward: Reward, config: ReNOConfig | None = None):
        require_differentiable(reward, "ReNO")
        self.gen, self.reward, self.cfg = generator, reward, config or ReNOConfig()
        if self.cfg.reward_checkpointing:
            enable_reward_checkpointing(reward)

    def _render(self, cond, noise: torch.Tensor) -> torch.Tensor:
        traj = self.gen.sample(cond, self.cfg.steps, noise=noise, grad="all", checkpoint=self.cfg.checkpoint)
        return self.gen.decode(traj.final)

    def _autocast(self):
        dtype = _AUTOCAST[self.cfg.autocast]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.gen.device.type, dtype=dtype)

    def optimize(self, prompts: Sequence[str], noise: torch.Tensor | None = None,
                 callback: Callable[[int, torch.Tensor], None] | None = None) -> ReNOResult:
        """Optimize one initial noise per prompt. ``callback(iteration, rewards)`` is called after each
        evaluation (progress bars, logging)."""
        cfg, prompts = self.cfg, list(prompts)
        t0 = time.time()
        cond = self.gen.encode_prompts(prompts)
        if noise is None:
            noise = self.gen.initial_noise(len(prompts), torch.Generator().manual_seed(cfg.seed))
        eps = noise.detach().float().clone().requires_grad_(True)
        if cfg.optimizer == "sgd":
            opt = torch.optim.SGD([eps], lr=cfg.lr, momentum=0.9, nesterov=True)
        else:
            opt = torch.optim.Adam([eps], lr=cfg.lr, eps=1e-2)
        best_r = torch.full((len(prompts),), -float("inf"))
        best_eps, best_img, best_it = eps.detach().clone(), None, torch.zeros(len(prompts), dtype=torch.long)
        init_img = init_r = None
        curve = []
        for it in range(cfg.iterations):
            with self._autocast():
                img = self._render(cond, eps.to(self.gen.dtype)).float().clamp(0, 1)
                r = self.reward(img, prompts).float()
            if not torch.isfinite(r).all():
                raise FloatingPointError(f"ReNO: non-finite reward at iteration {it} ({r.tolist()}); the noise "
                                         "would be poisoned. Check the reward on these images, or lower lr / "
                                         "disable autocast.")
            rd = r.detach().cpu()
            curve.append(rd.tolist())
            if callback is not None:
                callback(it, rd)
            if it == 0:
                init_img, init_r, best_img = img.detach().clone(), rd.clone(), img.detach().clone()
            better = rd > best_r
            if better.any():
                best_r = torch.where(better, rd, best_r)
                best_eps[better] = eps.detach()[better]
                best_img[better] = img.detach()[better]
                best_it[better] = it
            if it == cfg.iterations - 1:
                break  # the last iteration only evaluates (as the official loop)
            loss = (-r + cfg.reg_weight * chi_norm_reg(eps)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():  # per-sample gradient-norm clipping
                gn = eps.grad.flatten(1).norm(dim=1).clamp(min=1e-12)
                eps.grad.mul_((cfg.grad_clip / gn).clamp(max=1.0).view(-1, *[1] * (eps.ndim - 1)))
            opt.step()
        return ReNOResult(best_img, init_img, best_eps, best_r, init_r, best_it, curve, time.time() - t0)
