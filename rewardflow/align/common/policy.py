"""Shared pieces of the policy-gradient family on the denoising MDP (DDPO, Flow-GRPO, PRDP).

Not a method: the building blocks that those three methods share, so that each method file only holds its config,
its data collection and its loss (docs/algorithms.md#building-blocks):

* :func:`rollout` — stochastic sampling with per-step log-probs through ``Generator.sample(sde=True)`` (Flow-GRPO SDE
  for flow models, DDIM-eta for diffusion models; the Generator decides, the method never branches), decoding and
  black-box scoring;
* :func:`replay_step` — one stored transition re-evaluated under the current (or reference) weights, returning the
  Gaussian mean / std / log-prob of the step (the PPO ratio's numerator and the KL's means);
* :func:`ppo_clip_loss`, :func:`gaussian_step_kl` — the clipped surrogate and the per-step KL to the reference;
* :func:`group_advantages` (Flow-GRPO) and :class:`PerPromptStatTracker` (DDPO) — advantage builders.
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rewardflow.pipelines.base import StepOutput
from rewardflow.rewards.base import finite_mask


@dataclass
class Rollout:
    """``N`` sampled chains of ``S`` stochastic steps. ``latents[:, i]`` is the state at ``timesteps[i]``;
    ``log_probs[:, i]`` is log pi_old(latents[:, i+1] | latents[:, i]) (fp32, mean over dims, docs/algorithms.md#log-probs).
    ``rewards`` may hold NaN where a black-box reward could not score a sample; methods drop those samples."""

    prompts: list[str]
    latents: torch.Tensor      # [N, S+1, *latent]
    timesteps: torch.Tensor    # [S+1] grid (sigmas for flow, integer timesteps for diffusion)
    log_probs: torch.Tensor    # [N, S]
    images: torch.Tensor       # [N, 3, H, W] in [0, 1]
    rewards: torch.Tensor      # [N] fp32

    @property
    def num_steps(self) -> int:
        return self.log_probs.shape[1]

    @property
    def sigma_max(self) -> float:
        # Flow-GRPO's SDE divides by (1 - sigma_1) instead of (1 - 1) at the first grid point (docs/algorithms.md#flow-grpo-sde); the
        # diffusion (DDIM) step ignores it.
        return float(self.timesteps[1])


@torch.no_grad()
def rollout(gen, reward, prompts: Sequence[str], steps: int, noise_level: float | None = None,
            generator: torch.Generator | None = None, group_size: int = 1, same_noise: bool = False,
            guidance_scale: float | None = None) -> Rollout:
    """Sample ``group_size`` chains per prompt (consecutive: ``[p0]*G + [p1]*G + ...``) with per-step log-probs,
    decode and score them. ``same_noise`` shares the initial noise inside a group (flow_grpo ``same_latent``)."""
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    prompts = [p for p in prompts for _ in range(group_size)]
    cond = gen.encode_prompts(prompts)
    noise = None
    if same_noise:
        noise = gen.initial_noise(len(prompts) // group_size, generator).repeat_interleave(group_size, 0)
    traj = gen.sample(cond, steps, noise=noise, sde=True, noise_level=noise_level, generator=generator,
                      guidance_scale=guidance_scale)
    if traj.log_probs is None:
        raise ValueError("the rollout has no log-probs: noise_level must be > 0 for a stochastic policy")
    images = gen.decode(traj.final)
    scores = reward(images, prompts).detach().float().cpu()
    if scores.shape != (len(prompts),):
        raise ValueError(f"reward {getattr(reward, 'name', reward)!r} returned shape {tuple(scores.shape)}, "
                         f"expected [{len(prompts)}]")
    return Rollout(prompts, torch.stack(traj.latents, 1), traj.timesteps.float(), traj.log_probs.float().cpu(),
                   images, scores)


def reward_stats(rewards: torch.Tensor) -> dict[str, float]:
    """What a method logs about the rewards of its rollouts (``reward_mean`` is drawn on the reward curve)."""
    ok = finite_mask(rewards)
    r = rewards[ok].double()
    return {"reward_mean": float(r.mean()) if ok.any() else float("nan"),
            "reward_std": float(r.std(unbiased=False)) if ok.any() else float("nan"),
            "nonfinite_rewards": float((~ok).sum())}


def replay_step(gen, x: torch.Tensor, x_next: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor,
                prompts: Sequence[str], noise_level: float, sigma_max: float | None,
                guidance_scale: float | None = None, detach_uncond: bool = False) -> StepOutput:
    """Re-evaluate stored transitions ``x -> x_next`` (per-sample grid points ``t -> t_next``, [B]) under the
    generator's current weights: Gaussian mean (fp32), std ([B]) and log-prob ([B]) of each step.

    Samples that share a grid point go through the network together (DDPO shuffles the step order per sample, so
    one micro-batch can hold several grid points)."""
    prompts = list(prompts)
    t, t_next = torch.as_tensor(t).float().cpu(), torch.as_tensor(t_next).float().cpu()
    n = x.shape[0]
    mean = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    std = torch.empty(n, dtype=torch.float32, device=x.device)
    log_prob = torch.empty(n, dtype=torch.float32, device=x.device)
    parts_mean, parts_std, parts_lp, order = [], [], [], []
    for tv in torch.unique(t):
        idx = (t == tv).nonzero().flatten()
        tn = t_next[idx]
        if not torch.all(tn == tn[0]):
            raise ValueError("replay_step: transitions from the same grid point must share the next grid point")
        cond = gen.encode_prompts([prompts[i] for i in idx.tolist()])
        dev_idx = idx.to(x.device)
        xi = x[dev_idx]
        out = gen.predict(xi, float(tv), cond, guidance_scale=guidance_scale, detach_uncond=detach_uncond)
        res = gen.step(out, xi, float(tv), float(tn[0]), noise_level=noise_level, prev_sample=x_next[dev_idx],
                       sigma_max=sigma_max)
        if res.log_prob is None:
            raise ValueError("replay_step needs a stochastic step: noise_level must be > 0")
        parts_mean.append(res.mean)
        parts_std.append(res.std.expand(len(idx)))
        parts_lp.append(res.log_prob)
        order.append(dev_idx)
    if len(order) == 1:  # the common case: keep the graph simple
        return StepOutput(x_next, parts_mean[0], parts_std[0], parts_lp[0])
    order_t = torch.cat(order)
    mean = mean.index_put((order_t,), torch.cat(parts_mean))
    std = std.index_put((order_t,), torch.cat(parts_std))
    log_prob = log_prob.index_put((order_t,), torch.cat(parts_lp))
    return StepOutput(x_next, mean, std, log_prob)


def ppo_clip_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                  clip_range: float) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate (DDPO_IS / Flow-GRPO, docs/algorithms.md#ddpo-objective, docs/algorithms.md#flow-grpo-objective):
    ``mean max(-A * rho, -A * clip(rho, 1 - eps, 1 + eps))`` with ``rho = exp(log pi - log pi_old)``."""
    ratio = torch.exp(log_prob - old_log_prob.to(log_prob))
    adv = advantages.to(log_prob)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        d = log_prob - old_log_prob.to(log_prob)
        metrics = {"ratio_mean": float(ratio.mean()), "ratio_max_dev": float((ratio - 1).abs().max()),
                   "clipfrac": float(((ratio - 1).abs() > clip_range).float().mean()),
                   "approx_kl": float(0.5 * (d**2).mean())}
    return loss, metrics


def gaussian_step_kl(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL between two equal-variance Gaussian steps, averaged over latent dims (docs/algorithms.md#log-probs):
    ``mean((mu - mu_ref)^2) / (2 std^2)``.
    ``std`` is [B] (or scalar); returns [B]."""
    d = (mean.float() - ref_mean.float()) ** 2
    s = torch.as_tensor(std, dtype=torch.float32, device=d.device)
    s = s.reshape(s.shape + (1,) * (d.ndim - s.ndim)) if s.ndim else s
    return (d / (2 * s**2)).flatten(1).mean(1)


def step_length(gen, t: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
    """Length of a step as a fraction of the whole chain: sigma_i - sigma_{i+1} for flow, (t - t') / T_train for
    diffusion. Flow-GRPO's code KL equals the exact Gaussian KL times this length (docs/algorithms.md#flow-grpo-kl)."""
    mt = lambda v: gen.model_time(torch.as_tensor(v).float())
    return (mt(t) - mt(t_next)) / float(gen.num_train_timesteps)


def group_advantages(prompts: Sequence[str], rewards: torch.Tensor, global_std: bool = True, eps: float = 1e-4,
                     all_rewards: torch.Tensor | None = None) -> torch.Tensor:
    """Flow-GRPO's group-relative advantages (docs/algorithms.md#flow-grpo-objective, flow_grpo ``stat_tracking.py``):
    ``(r - mean_group(r)) / (std + eps)``, std the group's (population) std, or with ``global_std`` the std of
    ``all_rewards`` (all rewards of the step on every process; default: ``rewards``). Groups are the samples that
    share a prompt string. Non-finite rewards (a black box that could not score) are left out of every statistic
    and get a NaN advantage (callers drop those samples)."""
    rewards = rewards.double()
    if len(prompts) != rewards.numel():
        raise ValueError(f"{len(prompts)} prompts but {rewards.numel()} rewards")
    ok = finite_mask(rewards)
    adv = torch.full_like(rewards, float("nan"))
    pool = (all_rewards if all_rewards is not None else rewards).double()
    pool = pool[finite_mask(pool)]
    gstd = pool.std(unbiased=False) if pool.numel() else torch.tensor(0.0, dtype=torch.float64)
    for p in dict.fromkeys(prompts):
        idx = torch.tensor([i for i, q in enumerate(prompts) if q == p and bool(ok[i])], dtype=torch.long)
        if not len(idx):
            continue
        r = rewards[idx]
        std = gstd if global_std else r.std(unbiased=False)
        adv[idx] = (r - r.mean()) / (std + eps)
    return adv.float()


class PerPromptStatTracker:
    """DDPO's per-prompt reward normaliser (docs/algorithms.md#ddpo-stat-tracking; ddpo-pytorch ``stat_tracking.py``).

    Per prompt a FIFO of the last ``buffer_size`` rewards, kept across steps. While a prompt has fewer than
    ``min_count`` rewards, the whole batch's mean/std is used; afterwards the prompt's buffer. Advantage
    ``(r - mean) / (std + 1e-6)``. The buffers are part of the method state (saved on checkpoint)."""

    def __init__(self, buffer_size: int = 16, min_count: int = 16):
        if buffer_size < 1 or min_count < 0:
            raise ValueError(f"buffer_size must be >= 1 and min_count >= 0, got {buffer_size}, {min_count}")
        self.buffer_size, self.min_count = buffer_size, min_count
        self.stats: dict[str, deque] = {}

    def update(self, prompts: Sequence[str], rewards: torch.Tensor) -> torch.Tensor:
        """Advantages of ``rewards``; non-finite rewards are not recorded and get a NaN advantage."""
        rewards = rewards.double().cpu()
        ok = finite_mask(rewards)
        adv = torch.full_like(rewards, float("nan"))
        batch_mean, batch_std = rewards[ok].mean(), rewards[ok].std(unbiased=False)
        for p in dict.fromkeys(prompts):
            idx = torch.tensor([i for i, q in enumerate(prompts) if q == p and bool(ok[i])], dtype=torch.long)
            if not len(idx):
                continue
            buf = self.stats.setdefault(p, deque(maxlen=self.buffer_size))
            buf.extend(rewards[idx].tolist())
            if len(buf) < self.min_count:
                mean, std = batch_mean, batch_std
            else:
                hist = torch.tensor(list(buf), dtype=torch.float64)
                mean, std = hist.mean(), hist.std(unbiased=False)
            adv[idx] = (rewards[idx] - mean) / (std + 1e-6)
        return adv.float()

    def state_dict(self) -> dict[str, Any]:
        return {"buffer_size": self.buffer_size, "min_count": self.min_count,
                "stats": {p: list(v) for p, v in self.stats.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer_size, self.min_count = int(state["buffer_size"]), int(state["min_count"])
        self.stats = {p: deque(v, maxlen=self.buffer_size) for p, v in state["stats"].items()}


def batch_advantages(rewards: torch.Tensor, all_rewards: torch.Tensor | None = None) -> torch.Tensor:
    """Whole-batch z-score (DDPO without per-prompt tracking): (r - mean) / (std + 1e-8), the statistics over
    ``all_rewards`` (every process's rewards; default ``rewards``)."""
    a = (rewards if all_rewards is None else all_rewards).double()
    a = a[finite_mask(a)]
    return ((rewards.double() - a.mean()) / (a.std(unbiased=False) + 1e-8)).float()


class RolloutReuse:
    """Serve each collected rollout for ``updates`` consecutive optimizer steps (DDPO's ``num_inner_epochs`` with one
    optimizer step per pass; PRDP's several proximal steps on a fixed batch, docs/algorithms.md#prdp-proximal).

    The trainer takes one optimizer step per ``slots`` calls of ``collect()`` (``slots`` = its ``grad_accum``, given
    to the method as ``MethodContext.grad_accum``), so with ``updates = 1`` the gradient is always taken at ratio 1
    and the PPO / proximal clip never binds; from the second update on the stored ``old_log_prob`` belong to an
    older policy and the clip keeps the update in its trust region. The cache holds one rollout per call of a step:
    in a window of ``updates`` steps the first step draws ``slots`` rollouts and the k-th call of every later step
    is served the k-th of them. The cache is method state (resume-exact)."""

    def __init__(self, updates: int = 1, slots: int = 1):
        if updates < 1:
            raise ValueError(f"updates_per_rollout must be >= 1, got {updates}")
        if slots < 1:
            raise ValueError(f"RolloutReuse needs slots >= 1 (collect() calls per optimizer step), got {slots}")
        self.updates, self.slots = updates, slots
        self.cache: list[list[dict[str, Any]]] = []  # one rollout (a list of micro-batches) per call of a step
        self.calls = 0  # calls served in the current window of `updates` optimizer steps

    def get(self, make: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
        if self.calls >= self.updates * self.slots:
            self.cache, self.calls = [], 0
        if self.calls < self.slots:  # the window's first optimizer step draws its rollouts
            self.cache.append(make())
        out = self.cache[self.calls % self.slots]
        self.calls += 1
        return out

    @property
    def fresh(self) -> bool:
        """Whether the last :meth:`get` drew a new rollout (False: it re-served a cached one)."""
        return 0 < self.calls <= self.slots

    def state_dict(self) -> dict[str, Any]:
        if self.updates == 1 or not self.cache:
            return {}
        cpu = lambda v: v.detach().cpu() if torch.is_tensor(v) else v
        return {"rollouts": [[{k: cpu(v) for k, v in b.items()} for b in r] for r in self.cache],
                "calls": self.calls, "slots": self.slots}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        if "cache" in state:  # written before the cache held one rollout per collect() call of a step
            state = {"rollouts": [state["cache"]], "calls": state["served"], "slots": 1}
        if "rollouts" not in state:
            return
        if int(state["slots"]) != self.slots:
            warnings.warn(f"[rewardflow] the saved rollout cache holds {state['slots']} rollouts per optimizer step, "
                          f"this run collects {self.slots} (grad_accum changed): the next step draws fresh rollouts",
                          RuntimeWarning, stacklevel=2)
            self.cache, self.calls = [], 0
            return
        dev = lambda k, v: v.to(device) if torch.is_tensor(v) and k in ("x", "x_next") else v
        self.cache = [[{k: dev(k, v) for k, v in b.items()} for b in r] for r in state["rollouts"]]
        self.calls = int(state["calls"])


def train_step_indices(num_steps: int, fraction: float) -> int:
    """How many of the chain's steps are trained: int(num_steps * fraction), at least 1 (flow_grpo / DDPO
    ``timestep_fraction``)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"timestep_fraction must be in (0, 1], got {fraction}")
    return max(1, int(num_steps * fraction))


def chunks(n: int, size: int | None) -> list[torch.Tensor]:
    size = n if not size or size <= 0 else size
    return [torch.arange(i, min(n, i + size)) for i in range(0, n, size)]


def check_positive(name: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive number, got {value}")


def check_count(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
