"""Flow-NRG: noisy reward guidance during flow sampling (VideoAlign, Liu et al. 2025; docs/algorithms.md#flow-nrg).

At every ODE step the velocity is pushed up the gradient of a weighted reward, the gradient flowing through the
reward only (never through the generator)::

    v_guided(x_t, t) = v_theta(x_t, t) - scale * grad_{x_t} sum_k w_k r_k(x_t, t, c)

(minus, because t runs from 1 to 0 and an Euler step is ``x + (t_next - t) v``). The weights ``w_k`` over reward
heads give per-request trade-offs (e.g. VQ / MQ / TA). Two reward sources:

* ``"pixel"``: any differentiable pixel :class:`~rewardflow.rewards.base.Reward` on the decoded predicted clean
  sample ``x0_hat = x_t - t * v`` (v held fixed), i.e. the gradient reaches x_t through x0_hat and the VAE decoder;
* ``"latent"``: a :class:`~rewardflow.rewards.latent.LatentRewardModel` read directly on the noisy latent — no
  decode, which is the point of NRG for video.

With every weight 0 (or ``scale = 0``) the sampler output is bit-for-bit the plain sample. The loop itself is the
generator's own :meth:`~rewardflow.pipelines.base.Generator.sample`; NRG only supplies its ``step_callback``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rewardflow.config import option
from rewardflow.pipelines.base import Generator
from rewardflow.rewards.base import require_differentiable


@dataclass
class NRGConfig:
    scale: float = option(1.0, "guidance scale lambda' on the reward gradient (0: the plain sample)")
    # option() turns a dict default into a default factory (a fresh dict per config)
    weights: dict[str, float] = option({"score": 1.0}, "weight per reward head (e.g. VQ / MQ / TA)")  # noqa: RUF009
    steps: int = option(8, "sampler steps")
    t_min: float = option(0.0, "guide only for t in [t_min, t_max] (t = 1 is noise)")
    t_max: float = option(1.0, "upper end of the guided interval of t")
    seed: int = option(0, "seed of the initial noise when none is given")

    def __post_init__(self) -> None:
        if not math.isfinite(self.scale):
            raise ValueError(f"NRGConfig.scale must be a finite number, got {self.scale}")
        if self.steps < 1:
            raise ValueError(f"NRGConfig.steps must be >= 1, got {self.steps}")
        if not 0.0 <= self.t_min <= self.t_max <= 1.0:
            raise ValueError(f"NRGConfig needs 0 <= t_min <= t_max <= 1, got t_min={self.t_min}, t_max={self.t_max}")
        bad = {h: w for h, w in self.weights.items() if not math.isfinite(w)}
        if bad:
            raise ValueError(f"NRGConfig.weights must be finite numbers, got {bad}")


class NRG:
    """``NRG(gen, reward, cfg).sample(prompts)`` -> final latents; ``.generate(prompts)`` -> pixels."""

    def __init__(self, generator: Generator, reward, config: NRGConfig | None = None, source: str = "pixel"):
        self.gen, self.reward, self.cfg, self.source = generator, reward, config or NRGConfig(), source
        if generator.parametrization != "flow":
            raise ValueError(f"Flow-NRG guides a flow velocity; this generator is {generator.parametrization!r}. "
                             "Use a flow-matching model (SD3, FLUX, Wan, LTX, the toy model).")
        if source not in ("pixel", "latent"):
            raise ValueError(f"NRG source must be 'pixel' or 'latent', got {source!r}")
        if source == "pixel":
                require_differentiable(reward, "Flow-NRG")
        unknown = [h for h in self.cfg.weights if h not in reward.heads]
        if unknown:
            raise ValueError(f"NRG weights name unknown reward heads {unknown}; this reward has {list(reward.heads)}")

    def _reward_grad(self, x: torch.Tensor, t: float, v: torch.Tensor, cond, prompts: list[str]) -> torch.Tensor:
        with torch.enable_grad():
            xg = x.detach().float().requires_grad_(True)
            if self.source == "pixel":
                x0_hat = xg - t * v.detach().float()
                img = self.gen.decode(x0_hat.to(self.gen.dtype)).float().clamp(0, 1)
                heads = self.reward.all_heads(img, prompts)
            else:
                heads = self.reward.score_heads(xg.to(self.gen.dtype), torch.full((x.shape[0],), t), cond)
            total = sum(w * heads[h].float().sum() for h, w in self.cfg.weights.items() if w != 0)
            (g,) = torch.autograd.grad(total, xg)
        return g

    def sample(self, prompts: Sequence[str], noise: torch.Tensor | None = None,
               generator: torch.Generator | None = None):
        cfg, prompts = self.cfg, list(prompts)
        cond = self.gen.encode_prompts(prompts)
        if noise is None:
            noise = self.gen.initial_noise(len(prompts), generator or torch.Generator().manual_seed(cfg.seed))
        active = cfg.scale != 0 and any(w != 0 for w in cfg.weights.values())

        def guide(i, t, x, out):
            if not active or not cfg.t_min <= t <= cfg.t_max:
                return out
            g = self._reward_grad(x, t, out, cond, prompts)
            return out - cfg.scale * g.to(out.dtype)

        with torch.no_grad():
            return self.gen.sample(cond, cfg.steps, noise=noise, step_callback=guide)

    def generate(self, prompts: Sequence[str], noise: torch.Tensor | None = None) -> torch.Tensor:
        traj = self.sample(prompts, noise)
        with torch.no_grad():
            return self.gen.decode(traj.final)
