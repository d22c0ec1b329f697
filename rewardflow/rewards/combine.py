"""Reward combinators: a weighted sum of rewards (ReNO-style multi-reward objective, docs/algorithms.md#reno-objective)."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

from rewardflow.rewards.base import Reward, load_reward


class WeightedReward(Reward):
    """``sum_k w_k * r_k`` over component rewards. Each component's score is kept in ``last_components``
    for logging. A NaN component score (a black-box judge that could not score a sample) makes that sample's
    total NaN, so consumers drop it with :func:`~rewardflow.rewards.base.finite_mask` (never a silent 0).
    ``normalize`` standardizes each component as ``(r - mean_k) / std_k`` with fixed statistics given per
    component (e.g. measured on base samples), so weights are comparable across reward scales."""

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
        # black boxes may answer on the CPU
        return self._combine([r(media, prompts).to(media.device) for r in self.rewards])

    def score_files(self, media, prompts):
        """Each component scores the files with its own official preprocessing (see ``Reward.score_files``)."""
        parts = [r.score_files(media, prompts)[r.primary_head] for r in self.rewards]
        return {k: v.float() for k, v in self._combine(parts).items()}

    def _combine(self, scores: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        out, total = {}, 0.0
        for i, (r, w, s) in enumerate(zip(self.rewards, self.weights, scores)):
            if self.stats is not None:
                m, sd = self.stats[i]
                s = (s - m) / sd
            out[f"{r.name}#{i}"] = s
            total = total + w * s
        out["score"] = total
        self.last_components = {k: v.detach() for k, v in out.items() if k != "score"}
        return out


class MissingWeightsError(FileNotFoundError):
    """A reward's weight files are not on disk and could not be downloaded (offline, gated, unknown repo).
    ``reward`` is the reward's name in the spec, so a caller can say how to give the file (``--weights NAME=PATH``
    on the command line, ``reward_kwargs: {NAME: {path: PATH}}`` in a training config)."""

    def __init__(self, reward: str, message: str):
        super().__init__(" ".join(str(message).split()))  # one line: hub errors span several
        self.reward = reward

    def __str__(self) -> str:
        return str(self.args[0])

    def with_hint(self, hint: str) -> "MissingWeightsError":
        return MissingWeightsError(self.reward, f"{self}; {hint}")


def parse_reward_spec(spec: str) -> list[tuple[str, float]]:
    """``"hpsv2.1:5,imagereward:1"`` -> ``[("hpsv2.1", 5.0), ("imagereward", 1.0)]``.

    Comma-separated ``NAME[:WEIGHT]`` items (the weight follows the last ``:``; default 1). Weights may be zero
    (the component is logged but does not count) or negative (a penalty); NaN / infinite weights, empty items and
    repeated names are errors. Names are checked against the registry by :func:`build_reward`.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("empty reward spec; write NAME[:WEIGHT][,NAME[:WEIGHT]...], e.g. 'hpsv2.1:5,imagereward:1'")
    out: list[tuple[str, float]] = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            raise ValueError(f"empty item in reward spec {spec!r} (stray comma?)")
        name, sep, w = item.rpartition(":")
        if not sep:
            name, w = item, "1"
        name, w = name.strip(), w.strip()
        if not name:
            raise ValueError(f"missing reward name in {item!r} of reward spec {spec!r}")
        try:
            weight = float(w)
        except ValueError:
            raise ValueError(f"bad weight {w!r} for reward {name!r} in spec {spec!r}: expected a number, "
                             "as in 'hpsv2.1:5'") from None
        if not math.isfinite(weight):
            raise ValueError(f"weight of reward {name!r} must be finite, got {w!r}")
        if name in (n for n, _ in out):
            raise ValueError(f"reward {name!r} appears twice in spec {spec!r}; give it once with the summed weight")
        out.append((name, weight))
    return out


def build_reward(spec: str | Sequence[tuple[str, float]], **per_reward_kwargs: Mapping) -> Reward:
    """Build a reward from a spec string (see :func:`parse_reward_spec`) or ``[(name, weight), ...]``.

    ``per_reward_kwargs`` maps a reward name to the keyword arguments of its factory, e.g.
    ``build_reward("hpsv2.1:5,imagereward:1", **{"hpsv2.1": {"path": "HPS_v2.1_compressed.pt"}})``.
    One reward with weight 1 is returned as itself; otherwise a :class:`WeightedReward` that keeps every component.
    An unknown name raises ``KeyError`` listing the known rewards; missing weight files raise
    :class:`MissingWeightsError` naming the reward and the file.
    """
    items = parse_reward_spec(spec) if isinstance(spec, str) else [(str(n), float(w)) for n, w in spec]
    names = [n for n, _ in items]
    extra = sorted(set(per_reward_kwargs) - set(names))
    if extra:
        raise ValueError(f"keyword arguments given for {extra}, which are not in the reward spec {names}")
    rewards = []
    for n in names:
        try:
            rewards.append(load_reward(n, **dict(per_reward_kwargs.get(n) or {})))
        except MissingWeightsError:
            raise
        except FileNotFoundError as e:  # the factories name the missing file (and the hub repo it comes from)
            raise MissingWeightsError(n, f"reward {n!r}: {e}") from None
        except TypeError as e:  # a keyword the factory does not take
            raise ValueError(f"cannot build reward {n!r} with options {sorted(per_reward_kwargs.get(n) or {})}: "
                             f"{e}") from None
    if len(rewards) == 1 and items[0][1] == 1.0:
        return rewards[0]
    return WeightedReward(rewards, [w for _, w in items])
