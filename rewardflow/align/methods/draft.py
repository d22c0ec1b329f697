"""DRaFT-K / AlignProp and DRaFT-LV: backpropagate a differentiable reward through the sampler (docs/algorithms.md#draft).

* DRaFT-K (Clark et al., arXiv 2309.17400; docs/algorithms.md#draft-k): ``L = -r(decode(sample_theta(x_T, c)), c)``, gradients only through
  the last ``K`` sampler steps (the first ``T - K`` are treated as constants); per-step gradient checkpointing.
  ``random_k: true`` draws K uniformly in [1, T] each step (AlignProp's randomized truncation, ``mihirp1998/AlignProp``
  ``alignprop_trainer.py``, ``uniform`` strategy). Both are ``Generator.sample(grad="last_k")``: no sampling loop here.
* DRaFT-LV ("low variance", docs/algorithms.md#draft-lv): sample x0 without gradients, re-noise it ``lv_samples`` times to the last step's
  noise level ``x_1^(j) = gen.noisy(x0, eps_j, t_last)``, take the last step with gradients from each and average
  the rewards.

The loss is ``-loss_scale * mean(r)`` (AlignProp's ``loss_coeff``) and an optional ``kl_weight`` adds the
velocity/epsilon-KL of the last step's prediction to the reference (an explicit guard against reward hacking,
docs/algorithms.md#reward-hacking; DRaFT itself relies on LoRA and early stopping). A black-box reward is refused at construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rewardflow.align.method import Method, register_method
from rewardflow.config import check_numbers, option
from rewardflow.rewards.base import finite_mask

VARIANTS = ("draft", "lv")


@dataclass
class DRaFTConfig:
    variant: str = option("draft", "'draft' (DRaFT-K / AlignProp) or 'lv' (DRaFT-LV)")
    k: int = option(1, "sampler steps with gradients (the last k)")
    random_k: bool = option(False, "AlignProp: draw K uniformly in [1, steps] every step instead")
    lv_samples: int = option(2, "DRaFT-LV re-noised copies per sample (paper: n = 2)")
    loss_scale: float = option(1.0, "loss = -loss_scale * reward (AlignProp loss_coeff 0.01; with Adam the scale "
                                    "barely matters)")
    kl_weight: float = option(0.0, "||model - reference||^2 at the last step (0 = off)")
    checkpoint: bool = option(True, "per-step gradient checkpointing")

    def __post_init__(self) -> None:
        check_numbers(self, where="draft: ", at_least_1=("lv_samples",), positive=("loss_scale",))
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1 (the number of last sampler steps with gradients), got {self.k}")
        if self.variant == "lv" and self.lv_samples < 1:
            raise ValueError("lv_samples must be >= 1")
        if self.kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {self.kl_weight}")


@register_method("draft")
class DRaFT(Method):
    """DRaFT-K / AlignProp / DRaFT-LV (docs/algorithms.md#draft)."""

    config_class = DRaFTConfig
    needs_reward_grad = True

    def __init__(self, config: DRaFTConfig, ctx):
        super().__init__(config, ctx)  # refuses a black-box reward (require_differentiable)
        self.k: int | str = "random" if config.random_k else int(config.k)
        self.uses_reference = config.kl_weight > 0

    @classmethod
    def sharding_conflict(cls, config: DRaFTConfig, strategy: str) -> str | None:
        if config.random_k and config.variant == "draft" and strategy in ("fsdp", "zero3"):
            return ("random_k=true draws K per process, so the processes would recompute different numbers of "
                    "sampler steps in backward (each one a collective); set random_k=false (a fixed k)")
        return None

    def collect(self, prompts: list[str], step: int) -> list[dict[str, Any]]:
        # nothing to collect: the differentiable sampling happens in the loss; draw the noise here so the step is
        # reproducible from the checkpointed RNG
        gen = self.ctx.generator
        return [{"prompts": list(prompts), "noise": gen.initial_noise(len(prompts), self.ctx.rng)}]

    def _kl(self, x_t, t, cond, pred) -> torch.Tensor:
        gen = self.ctx.generator
        with torch.no_grad(), gen.reference():
            ref = gen.predict(x_t, t, cond, guidance_scale=1.0)
        return (pred.float() - ref.float()).pow(2).flatten(1).mean(1).mean()

    def loss(self, batch: dict[str, Any], step: int):
        c, gen, ctx = self.config, self.ctx.generator, self.ctx
        prompts = batch["prompts"]
        cond = gen.encode_prompts(prompts)
        steps = ctx.sample_steps
        diag: dict[str, float] = {}
        if c.variant == "draft":
            traj = gen.sample(cond, steps, noise=batch["noise"], grad="last_k", k=self.k, checkpoint=c.checkpoint,
                              generator=ctx.rng)
            images = gen.decode(traj.final)
            r = ctx.reward(images, prompts)
            diag["k"] = float(len(traj.grad_steps))
            kl = None
            if c.kl_weight > 0:
                t_last = traj.timesteps[-2]
                x_prev = traj.latents[-2]
                kl = self._kl(x_prev, t_last, cond, gen.predict(x_prev, t_last, cond, guidance_scale=1.0))
        else:
            with torch.no_grad():
                traj = gen.sample(cond, steps, noise=batch["noise"], generator=ctx.rng)
            x0 = traj.final.detach()
            t_last, t_end = traj.timesteps[-2], traj.timesteps[-1]
            n = c.lv_samples
            x0n = x0.repeat_interleave(n, 0)
            cond_n = cond.repeat(n)
            eps = torch.randn(x0n.shape, generator=ctx.rng).to(x0n.device, x0n.dtype)
            x1 = gen.noisy(x0n, eps, t_last.expand(x0n.shape[0]).to(x0n.device))
            pred = gen.predict(x1, t_last, cond_n)
            x_new = gen.step(pred, x1, t_last, t_end).prev_sample
            images = gen.decode(x_new)
            r = ctx.reward(images, cond_n.prompts)
            kl = self._kl(x1, t_last, cond_n, pred) if c.kl_weight > 0 else None
        ok = finite_mask(r.detach())
        diag["reward_mean"] = float(r.detach()[ok].mean()) if ok.any() else float("nan")
        ctx.log({"reward_mean": diag["reward_mean"], "nonfinite_rewards": float((~ok).sum())})
        if not ok.any():
            return r.sum() * float("nan"), diag  # non-finite: the trainer skips the step
        loss = -c.loss_scale * r[ok].mean()
        if kl is not None:
            loss = loss + c.kl_weight * kl
            diag["kl"] = float(kl.detach())
        return loss, diag
