"""Reward combinators: a weighted sum of rewards (ReNO-style multi-reward objective, ALGORITHMS.md §10.1)."""

from __future__ import annotations

from typing import Sequence

import torch

from rewardflow.rewards.base import Reward


class WeightedReward(Reward):
    """``sum_k w_k * r_k`` over component rewards. Each component's score is kept in ``last_components``
    for logging. ``normalize`` standardizes each component as ``(r - mean_k) / std_k`` with fixed statistics
    given per component (e.g. measured on base samples), so weights are comparable across reward scales."""

    name = "weighted"

    def __init__(self, rewards: Sequence[Reward], weights: Sequence[float],
                 stats: Sequence[tuple[float, float]] | None = None):
        super().__init__()
        if len(rewards) != len(weights) or not rewards:
            raise ValueError(f"WeightedReward needs one weight per reward, got {len(rewards)} rewards and "
                             f"{len(weights)} weights")
        mods = {r.modality for r in rewards}
        if len(mods) != 1:
            raise ValueError(f"cannot combine rewards of different modalities: {sorted(mods)}")
        if stats is not None and len(stats) != len(rewards):
            raise ValueError("stats needs one (mean, std) per reward")
        self.rewards = torch.nn.ModuleList(rewards)
        self.weights = [float(w) for w in weights]
        self.stats = list(stats) if stats is not None else None
        self.modality = mods.pop()
        self.differentiable = all(r.differentiable for r in rewards)
        self.heads = ("score",) + tuple(f"{r.name}#{i}" for i, r in enumerate(rewards))
        self.last_components: dict[str, torch.Tensor] = {}

    def score_heads(self, media, prompts):
        out, total = {}, 0.0
        for i, (r, w) in enumerate(zip(self.rewards, self.weights)):
            s = r(media, prompts)
            if self.stats is not None:
                m, sd = self.stats[i]
                s = (s - m) / sd
            out[f"{r.name}#{i}"] = s
            total = total + w * s
        out["score"] = total
        self.last_components = {k: v.detach() for k, v in out.items() if k != "score"}
        return out
