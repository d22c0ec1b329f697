"""DRAGON: Distributional RewArds for Generative OptimizatioN (Bai et al., arXiv 2504.15217; docs/algorithms.md#dragon).

No official code exists; this follows docs/algorithms.md#dragon-algorithm:

1. on-policy: ``group_size`` generations per prompt from the current model (ODE sampling, independent noise);
2. scoring with the reward. An instance or instance-to-distribution reward (any :class:`Reward`, e.g. ``toy_clip``
   or ``exemplar_similarity``) gives one score per generation. A distribution-to-distribution reward (a set-level
   reward from :mod:`rewardflow.rewards.distributional`, e.g. ``frechet`` or ``vendi``) scores the whole batch; each
   generation's score is then its leave-one-out contribution ``R(D) - R(D \\ {i})``;
3. positive and negative sets: **paired** — per prompt, the best-scored generation (D+) against the worst (D-);
   **unpaired** — D+ = the generations above their prompt's mean score (instance rewards) or in the top half of the
   batch's contributions (set-level rewards), D- the rest;
4. a contrastive loss on the two sets with the base model as reference (``gen.reference()``, LoRA disabled):
   Diffusion-DPO (docs/algorithms.md#diffusion-dpo-objective) when paired, Diffusion-KTO when unpaired, both in the generator's own parametrization
   (epsilon / v / flow target through ``gen.noisy`` / ``gen.target``, shared noise and t within a pair).

``loss="auto"`` pairs for instance rewards (DPO) and leaves set-level rewards unpaired (KTO), as docs/algorithms.md#dragon-algorithm describes.

DPO: ``-log sigmoid(-(beta/2) [(e_w - e_ref,w) - (e_l - e_ref,l)])`` with ``e = mean_dims ||target - out||^2``
(the shared :func:`rewardflow.align.methods.dpo.dpo_loss`; sampling, pairing and errors from :mod:`rewardflow.align.common.samples`).
KTO (Ethayarajh et al. 2024, Diffusion-KTO's per-sample form): implied reward ``h = (beta/2)(e_ref - e)``,
reference point ``z = max(0, mean h)`` (detached), loss ``1 - sigmoid(h - z)`` for D+ and ``1 - sigmoid(z - h)``
for D-, averaged.

Not implemented: refreshing the reference during training (the reference is always the base model); set-level
rewards are computed over each process's batch (not gathered across processes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rewardflow.align.common import policy as P
from rewardflow.align.common.samples import (
    best_worst_pairs,
    draw_noise_and_t,
    per_sample_error,
    sample_and_score,
)
from rewardflow.align.method import Method, MethodContext, register_method
from rewardflow.align.methods.dpo import dpo_loss
from rewardflow.config import option
from rewardflow.rewards.base import finite_mask


@dataclass
class DRAGONConfig:
    group_size: int = option(4, "generations per prompt")
    loss: str = option("auto", "'auto' (DPO for instance rewards, KTO for set-level) | 'dpo' | 'kto'")
    beta: float = option(500.0, "DPO/KTO temperature (mean-over-dims errors; 500 in docs/toy-world.md#lessons)")
    split: str = option("auto", "unpaired split: 'prompt' (above the prompt's mean) | 'batch' (top half) | auto")
    timestep_draws: int = option(1, "(t, noise) draws per collected generation, one micro-batch each")
    micro_batch_size: int = option(0, "pairs (DPO) or samples (KTO) per micro-batch (0: all)")
    train_guidance_scale: float = option(1.0, "CFG inside the loss (1: conditional branch only, as Diffusion-DPO)")

    def __post_init__(self) -> None:
        if self.loss not in ("auto", "dpo", "kto"):
            raise ValueError(f"dragon: loss must be 'auto', 'dpo' or 'kto', got {self.loss!r}")
        if self.split not in ("auto", "prompt", "batch"):
            raise ValueError(f"dragon: split must be 'auto', 'prompt' or 'batch', got {self.split!r}")
        if self.group_size < 2:
            raise ValueError(f"dragon: group_size must be >= 2, got {self.group_size}")
        P.check_positive("dragon: beta", self.beta)
        P.check_count("dragon: timestep_draws", self.timestep_draws)


def kto_loss(err: torch.Tensor, ref: torch.Tensor, desirable: torch.Tensor, beta: float
             ) -> tuple[torch.Tensor, dict[str, float]]:
    """Diffusion-KTO loss over unpaired samples: see the module docstring."""
    h = 0.5 * beta * (ref.to(err) - err)
    z = h.detach().mean().clamp(min=0)
    d = desirable.to(err.device).bool()
    per = torch.where(d, 1 - torch.sigmoid(h - z), 1 - torch.sigmoid(z - h))
    with torch.no_grad():
        m = {"kto_ref_point": float(z), "implied_reward_pos": float(h[d].mean()) if d.any() else 0.0,
             "implied_reward_neg": float(h[~d].mean()) if (~d).any() else 0.0, "mse": float(err.mean())}
    return per.mean(), m


def split_sets(prompts: list[str], scores: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(desirable, usable) masks. Desirable: above the prompt's mean score (``"prompt"``) or in the top half of the
    batch (``"batch"``, ties in batch order). Samples with a non-finite score are not usable (neither set)."""
    ok = finite_mask(scores)
    d = torch.zeros(len(scores), dtype=torch.bool)
    if mode == "batch":
        idx = ok.nonzero().flatten()
        order = idx[torch.argsort(scores[idx], descending=True, stable=True)]
        d[order[: len(idx) // 2]] = True
        return d, ok
    if mode != "prompt":
        raise ValueError(f"split must be 'prompt' or 'batch', got {mode!r}")
    for p in dict.fromkeys(prompts):
        idx = torch.tensor([i for i, q in enumerate(prompts) if q == p and bool(ok[i])], dtype=torch.long)
        if len(idx):
            d[idx] = scores[idx] > scores[idx].mean()
    return d, ok


@register_method("dragon")
class DRAGON(Method):
    config_class = DRAGONConfig
    uses_reference = True

    def __init__(self, config: DRAGONConfig, ctx: MethodContext):
        super().__init__(config, ctx)
        if ctx.reward is None:
            raise ValueError("dragon needs a reward (instance, instance-to-distribution or set-level)")
        self.set_level = bool(getattr(ctx.reward, "set_level", False))
        self.loss_kind = config.loss if config.loss != "auto" else ("kto" if self.set_level else "dpo")
        self.split = config.split if config.split != "auto" else ("batch" if self.set_level else "prompt")
        self.samples_per_prompt = config.group_size

    # ---------------------------------------------------------------- data
    @torch.no_grad()
    def collect(self, prompts: list[str], step: int) -> list[dict[str, Any]]:
        cfg, ctx, gen = self.config, self.ctx, self.ctx.generator
        s = sample_and_score(gen, ctx.reward, prompts, cfg.group_size, ctx.sample_steps, generator=ctx.rng)
        ok = finite_mask(s.rewards)
        log = {"reward_mean": float(s.rewards[ok].mean()) if ok.any() else float("nan"),
               "nonfinite_rewards": float((~ok).sum())}
        if self.set_level:
            log["set_reward"] = float(ctx.reward.score_set(s.images, s.prompts))
        ctx.log(log)
        rng = ctx.rng if ctx.rng is None or ctx.rng.device.type == "cpu" else None
        batches = []
        if self.loss_kind == "dpo":
            pairs = torch.tensor(best_worst_pairs(s.rewards, cfg.group_size), dtype=torch.long).reshape(-1, 2)
            for _ in range(cfg.timestep_draws):
                for part in P.chunks(len(pairs), cfg.micro_batch_size):
                    w, l = pairs[part, 0].to(s.latents.device), pairs[part, 1].to(s.latents.device)
                    batches.append({"prompts": [s.prompts[i] for i in w.tolist()], "x0_w": s.latents[w],
                                    "x0_l": s.latents[l], **self._noise_t(s.latents[w], rng)})
        else:
            desirable, usable = split_sets(s.prompts, s.rewards, self.split)
            keep = usable.nonzero().flatten()
            for _ in range(cfg.timestep_draws):
                for part in P.chunks(len(keep), cfg.micro_batch_size):
                    idx = keep[part]
                    x0 = s.latents[idx.to(s.latents.device)]
                    batches.append({"prompts": [s.prompts[i] for i in idx.tolist()], "x0": x0,
                                    "desirable": desirable[idx], **self._noise_t(x0, rng)})
        return batches

    def _noise_t(self, x0: torch.Tensor, rng) -> dict[str, torch.Tensor]:
        noise, t = draw_noise_and_t(self.ctx.generator, x0, rng)
        return {"noise": noise, "t": t}

    # ---------------------------------------------------------------- loss
    def _errors(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, prompts: list[str]):
        """Per-sample denoising errors of the policy (with grad) and of the reference, in the generator's own
        parametrization."""
        gen, g = self.ctx.generator, self.config.train_guidance_scale
        cond = gen.encode_prompts(prompts)
        t = t.to(x0.device)
        x_t, target = gen.noisy(x0, noise, t), gen.target(x0, noise, t)
        err = per_sample_error(gen.predict(x_t, t, cond, guidance_scale=g), target)
        with torch.no_grad(), gen.reference():
            ref = per_sample_error(gen.predict(x_t, t, cond, guidance_scale=g), target)
        return err, ref

    def loss(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        beta = self.config.beta
        if self.loss_kind == "dpo":
            n = len(batch["prompts"])
            # winner and loser share the noise and the timestep (docs/algorithms.md#dpo-pitfalls: otherwise the variance explodes)
            x0 = torch.cat([batch["x0_w"], batch["x0_l"]])
            err, ref = self._errors(x0, batch["noise"].repeat(2, *[1] * (x0.ndim - 1)), batch["t"].repeat(2),
                                    batch["prompts"] * 2)
            return dpo_loss(err[:n], err[n:], ref[:n], ref[n:], beta)
        err, ref = self._errors(batch["x0"], batch["noise"], batch["t"], batch["prompts"])
        return kto_loss(err, ref, batch["desirable"], beta)
