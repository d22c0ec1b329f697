"""Toy-world rewards: the tiny CLIP-style model (``toy_clip``, ``toy_clip_adv``) and the exact pixel oracle
(``toy_oracle``, a black box: it says whether an image satisfies its prompt, with per-clause partial credit)."""

from __future__ import annotations

import os

import torch

from rewardflow.rewards.base import Reward, register_reward
from rewardflow.toy import world
from rewardflow.toy.assets import asset_path
from rewardflow.toy.models import ToyCLIPModel


class ToyCLIPReward(Reward):
    """Cosine similarity of the toy CLIP image and text embeddings, in [-1, 1]. Differentiable in pixels."""

    modality = "image"
    differentiable = True

    def __init__(self, path: str | os.PathLike, name: str = "toy_clip", device: str | torch.device = "cpu"):
        super().__init__()
        from transformers import PreTrainedTokenizerFast  # lazy: transformers is a heavy import

        if not os.path.isdir(path):
            raise FileNotFoundError(f"toy reward directory not found: {path} "
                                    "(train one with `rewardflow toy train-reward --out DIR`)")
        self.name = name
        self.model = ToyCLIPModel.from_pretrained(str(path), dtype=torch.float32).to(device).eval().requires_grad_(False)
        self.tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path))
        self._ids: dict[str, torch.Tensor] = {}

    def _tokens(self, prompts: list[str]) -> torch.Tensor:
        for p in prompts:
            if p not in self._ids:
                self._ids[p] = self.tokenizer(p, padding="max_length", max_length=self.model.config.max_tokens,
                                              truncation=True, return_tensors="pt")["input_ids"][0]
        return torch.stack([self._ids[p] for p in prompts]).to(self.model.device)

    def score(self, media, prompts):
        return self.model(media.to(self.model.device, self.model.dtype), self._tokens(prompts))


class ToyOracleReward(Reward):
    """The exact pixel oracle as a (black-box) reward: per-clause partial credit in [0, 1], 1 iff it passes."""

    name = "toy_oracle"
    modality = "image"
    differentiable = False
    heads = ("score", "pass")

    def score_heads(self, media, prompts):
        partial = torch.as_tensor(world.oracle_score_batch(media.detach().cpu(), prompts), dtype=torch.float32)
        return {"score": partial, "pass": (partial >= 1.0).float()}


@register_reward("toy_clip", description="tiny CLIP-style toy-world reward (shipped weights)")
def _toy_clip(path: str | None = None, **kw) -> ToyCLIPReward:
    return ToyCLIPReward(path or asset_path("reward"), name="toy_clip", **kw)


@register_reward("toy_clip_adv", description="toy CLIP reward trained with FGSM adversarial examples")
def _toy_clip_adv(path: str | None = None, **kw) -> ToyCLIPReward:
    return ToyCLIPReward(path or asset_path("reward_adv"), name="toy_clip_adv", **kw)


@register_reward("toy_oracle", differentiable=False, description="exact pixel oracle of the toy world (heads: score, pass)")
def _toy_oracle() -> ToyOracleReward:
    return ToyOracleReward()
