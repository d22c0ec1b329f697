"""Training the latent reward model for Flow-NRG (VideoAlign; docs/algorithms.md#latent-reward, docs/rewards.md#videoreward).

``r_phi(x_t, t, c)`` = the frozen generator's first blocks + a trainable head
(:class:`~rewardflow.rewards.latent.LatentRewardModel`). Data: preference pairs — here collected on-policy: two
samples per prompt from the frozen generator, labelled by a *judge* reward (any registered reward, black box
allowed; in the toy world the exact oracle plays the human), a tie when the judge scores differ by at most
``tie_tol``. Loss: Bradley–Terry with ties (k = 5) on the two samples noised to the same random t with the same
noise, so the head learns preferences at every noise level the guidance will query.

Run with ``rewardflow train configs/toy/latent_reward.yaml``; the head is written to ``OUTPUT_DIR/final``
and loads with ``LatentRewardModel.from_pretrained(gen, dir)``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rewardflow.align.method import Method, MethodContext, register_method
from rewardflow.config import option
from rewardflow.rewards.base import load_reward
from rewardflow.rewards.latent import LatentRewardModel
from rewardflow.rewards.losses import bt_with_ties_loss


@dataclass
class LatentRewardConfig:
    judge: str = option("", "the reward that labels pairs (a registry name, black boxes allowed; required)")
    n_blocks: int = option(1, "generator blocks in the backbone")
    hidden: int = option(128, "width of the reward head")
    k: float = option(5.0, "BT-with-ties tie parameter (VideoAlign: 5)")
    tie_tol: float = option(0.0, "|judge(A) - judge(B)| <= tie_tol -> tie")
    t_per_pair: int = option(4, "random noise levels per pair per step")
    nrg_scale: float = option(1.0, "guidance scale stored with the head (used by `noise-opt --method nrg` defaults)")

    def __post_init__(self) -> None:
        if not self.judge:
            raise ValueError("latent_reward needs judge=NAME: the reward that labels its pairs (e.g. a human-preference "
                             "reward, or the toy world's toy_clip / toy_oracle)")
        if self.n_blocks < 1 or self.hidden < 1 or self.t_per_pair < 1:
            raise ValueError(f"latent_reward: n_blocks, hidden and t_per_pair must be >= 1, got {self.n_blocks}, "
                             f"{self.hidden}, {self.t_per_pair}")
        if not (self.k > 1 and math.isfinite(self.k)):
            raise ValueError(f"latent_reward: k must be > 1 (BT-with-ties gives ties probability 0 at k = 1), "
                             f"got {self.k}")
        if not (self.tie_tol >= 0 and math.isfinite(self.tie_tol)):
            raise ValueError(f"latent_reward: tie_tol must be >= 0, got {self.tie_tol}")
        if not math.isfinite(self.nrg_scale):
            raise ValueError(f"latent_reward: nrg_scale must be a finite number, got {self.nrg_scale}")


@register_method("latent_reward")
class LatentRewardMethod(Method):
    config_class = LatentRewardConfig
    trains_generator = False
    samples_per_prompt = 2

    def __init__(self, config: LatentRewardConfig, ctx: MethodContext):
        super().__init__(config, ctx)
        if ctx.generator.parametrization != "flow":
            raise ValueError("the latent reward model serves Flow-NRG, which needs a flow generator")
        ctx.generator.denoiser.requires_grad_(False)  # the backbone is frozen; only the head trains
        self.judge = load_reward(config.judge).to(ctx.device).eval()
        self.lrm = LatentRewardModel(ctx.generator, n_blocks=config.n_blocks, hidden=config.hidden).to(ctx.device)

    def trainable_module(self):
        return self.lrm.head

    @torch.no_grad()
    def collect(self, prompts: list[str], step: int) -> list[dict[str, Any]]:
        gen, c = self.ctx.generator, self.config
        pair_prompts = [p for p in prompts for _ in range(2)]
        cond = gen.encode_prompts(pair_prompts)
        x0 = gen.sample(cond, self.ctx.sample_steps, generator=self.ctx.rng).final
        scores = self.judge(gen.decode(x0).float(), pair_prompts).float().view(-1, 2)
        finite = torch.isfinite(scores).all(1)
        d = scores[:, 0] - scores[:, 1]
        label = torch.where(d > c.tie_tol, 1, torch.where(d < -c.tie_tol, -1, 0))
        label = torch.where(finite, label, torch.full_like(label, 22))  # 22: masked (NaN judge score)
        self.ctx.log({"judge_tie_fraction": float((label == 0).float().mean())})
        x0 = x0.view(len(prompts), 2, *x0.shape[1:])
        return [{"prompts": list(prompts), "x0_a": x0[:, 0], "x0_b": x0[:, 1], "label": label}]

    def loss(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        gen, c = self.ctx.generator, self.config
        prompts = [p for p in batch["prompts"] for _ in range(c.t_per_pair)]
        xa = batch["x0_a"].repeat_interleave(c.t_per_pair, 0)
        xb = batch["x0_b"].repeat_interleave(c.t_per_pair, 0)
        label = batch["label"].repeat_interleave(c.t_per_pair, 0)
        t = gen.sample_t(len(prompts), self.ctx.rng, dist="uniform").to(xa.device)
        noise = torch.randn(xa.shape, generator=self.ctx.rng).to(xa.device, xa.dtype)
        cond = gen.encode_prompts(prompts)
        ra = self.lrm(gen.noisy(xa, noise, t), t, cond)
        rb = self.lrm(gen.noisy(xb, noise, t), t, cond)
        if not ((label == 1) | (label == -1) | (label == 0)).any():  # the judge failed on every pair
            return ra.sum() * float("nan"), {"bt_loss": float("nan"), "pair_accuracy": float("nan")}
        loss = bt_with_ties_loss(ra, rb, label, k=c.k)
        decided = (label == 1) | (label == -1)
        acc = float(((ra > rb) == (label == 1))[decided].float().mean()) if decided.any() else float("nan")
        return loss, {"bt_loss": float(loss.detach()), "pair_accuracy": acc}

    @torch.no_grad()
    def evaluate(self, prompts: list[str]) -> dict[str, float]:
        """Held-out pair accuracy: two fixed-seed samples per prompt, judged, then scored by the head at
        t = 0.1, 0.5, 0.9 (same noise for both); accuracy over the pairs the judge did not tie."""
        gen, c = self.ctx.generator, self.config
        rng = torch.Generator().manual_seed(0)
        pair_prompts = [p for p in prompts for _ in range(2)]
        cond = gen.encode_prompts(pair_prompts)
        x0 = gen.sample(cond, self.ctx.sample_steps, generator=rng).final
        s = self.judge(gen.decode(x0).float(), pair_prompts).float().view(-1, 2)
        d = s[:, 0] - s[:, 1]
        decided = torch.isfinite(d) & (d.abs() > c.tie_tol)
        out: dict[str, float] = {"eval_pairs": float(decided.sum())}
        was = self.lrm.training
        self.lrm.eval()
        accs = []
        for tv in (0.1, 0.5, 0.9):
            t = torch.full((len(pair_prompts),), tv, device=x0.device)
            noise = torch.randn(x0[::2].shape, generator=rng).to(x0.device, x0.dtype).repeat_interleave(2, 0)
            r = self.lrm(gen.noisy(x0, noise, t), t, cond).float().view(-1, 2)
            ok = ((r[:, 0] > r[:, 1]) == (d > 0))[decided.to(r.device)]
            a = float(ok.float().mean()) if ok.numel() else float("nan")
            out[f"pair_accuracy_t{tv}"] = a
            accs.append(a)
        self.lrm.train(was)
        out["eval_pair_accuracy"] = sum(accs) / len(accs)
        return out

    def save_pretrained(self, path) -> None:
        self.lrm.save_pretrained(path)
        meta = Path(path) / "latent_reward.json"
        m = json.loads(meta.read_text())
        m["nrg_scale"] = self.config.nrg_scale
        meta.write_text(json.dumps(m, indent=1))
