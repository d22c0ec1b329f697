"""Toy video-world rewards: the tiny trained video reward (``toy_video``) and the exact video oracle
(``toy_video_oracle``, a black box with partial credit for content and motion direction)."""

from __future__ import annotations

import os

import torch

from rewardflow.rewards.base import Reward, register_reward
from rewardflow.toy.assets import asset_path
from rewardflow.toy.video import video_oracle_score_batch


class ToyVideoReward(Reward):
    """Cosine similarity of the toy video and caption embeddings, in [-1, 1]. Differentiable in pixels."""

    name = "toy_video"
    modality = "video"
    differentiable = True

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu"):
        super().__init__()
        from transformers import PreTrainedTokenizerFast  # lazy: transformers is a heavy import

        # lazy: video_reward imports transformers through the toy pipeline, not needed to register the reward
        from rewardflow.toy.video_reward import ToyVideoRewardModel

        if not os.path.isdir(path):
            raise FileNotFoundError(f"toy video reward directory not found: {path} "
                                    "(train one with `rewardflow toy train-video-reward --out DIR`)")
        self.model = ToyVideoRewardModel.from_pretrained(str(path)).to(device).eval().requires_grad_(False)
        self.tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path))

    def score(self, media, prompts):
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.model.config.max_tokens,
                             truncation=True, return_tensors="pt")["input_ids"].to(self.model.device)
        return self.model(media.to(self.model.device, self.model.dtype), ids)


class ToyVideoOracleReward(Reward):
    """The exact toy video oracle: ``0.5 * content fraction + 0.5 * direction correct``; ``pass`` is 1 iff exact."""

    name = "toy_video_oracle"
    modality = "video"
    differentiable = False
    heads = ("score", "pass")

    def score_heads(self, media, prompts):
        s = torch.as_tensor(video_oracle_score_batch(media.detach().cpu(), prompts), dtype=torch.float32)
        return {"score": s, "pass": (s >= 1.0).float()}


@register_reward("toy_video", modality="video", description="tiny toy-world video reward (content + motion, shipped)")
def _toy_video(path: str | None = None, **kw) -> ToyVideoReward:
    return ToyVideoReward(path or asset_path("video_reward"), **kw)


@register_reward("toy_video_oracle", modality="video", differentiable=False,
                 description="exact oracle of the toy video world (heads: score, pass)")
def _toy_video_oracle() -> ToyVideoOracleReward:
    return ToyVideoOracleReward()
