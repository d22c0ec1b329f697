"""The tiny video reward of the toy video world (:mod:`rewardflow.toy.video`) and its training recipe.

Model (:class:`ToyVideoRewardModel`, about 0.2 M parameters, diffusers ``ModelMixin`` layout: ``config.json`` +
``diffusion_pytorch_model.safetensors``, tokenizer saved next to it):

* frame tower: three stages of 2x [conv3x3, GroupNorm, SiLU] + 2x2 average pooling, adaptive pooling to 4x4 (keeps
  the layout, so where the object is stays encodable), a linear map -> per-frame feature ``f_t``;
* temporal head: content ``c = mean_t f_t`` and motion ``m = mean_{t >= T/2} f_t - mean_{t < T/2} f_t`` (late minus
  early: the sign of a displacement is what tells "left" from "right"), ``video = Linear([c, m])``;
* text tower: word embeddings + learned positions, mean over the caption's tokens, a 2-layer MLP;
* score: cosine similarity of the L2-normalised video and text embeddings, in [-1, 1]. Differentiable in pixels.

Training (:func:`train_video_reward`): contrastive, per clip, over its own caption and its hard negatives (the other
three directions and a colour / shape edit); plus, per caption, the clip against its time-reversed copy and a still
clip of the same object (the reversed clip's frame features are the original ones flipped, so it costs no extra
frame encoding).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from rewardflow.io.paths import respect_umask
from rewardflow.toy import video as vworld
from rewardflow.toy.models import _stage
from rewardflow.toy.pipeline import MAX_TOKENS, build_tokenizer
from rewardflow.toy.train import _log, _lr, _optim_step


class ToyVideoRewardModel(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, vocab_size: int = 44, embed_dim: int = 64, width: int = 64, channels=(16, 32, 64),
                 max_tokens: int = 20, image_size: int = 32, pad_token_id: int = 0):
        super().__init__()
        c = list(channels)
        self.frame_tower = nn.Sequential(_stage(3, c[0]), _stage(c[0], c[1]), _stage(c[1], c[2]),
                                         nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(c[2] * 16, width))
        self.temporal = nn.Sequential(nn.Linear(2 * width, width), nn.SiLU(), nn.Linear(width, embed_dim))
        self.tok = nn.Embedding(vocab_size, width)
        self.pos = nn.Parameter(torch.zeros(max_tokens, width))
        self.text_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(2.659))  # log(1/0.07), as CLIP
        nn.init.normal_(self.pos, std=0.02)

    def encode_frames(self, video: torch.Tensor) -> torch.Tensor:
        """``[B, T, 3, H, W]`` in [0, 1] -> per-frame features ``[B, T, width]``."""
        B, T = video.shape[:2]
        x = video.flatten(0, 1)
        s = self.config.image_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        return self.frame_tower(x * 2 - 1).view(B, T, -1)

    def pool(self, feats: torch.Tensor) -> torch.Tensor:
        """Per-frame features ``[B, T, width]`` -> unit-norm video embeddings ``[B, embed_dim]``."""
        half = feats.shape[1] // 2
        motion = feats[:, feats.shape[1] - half:].mean(1) - feats[:, :half].mean(1)
        return F.normalize(self.temporal(torch.cat([feats.mean(1), motion], -1)), dim=-1)

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        return self.pool(self.encode_frames(video))

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        keep = (input_ids != self.config.pad_token_id).unsqueeze(-1).float()
        h = (self.tok(input_ids) + self.pos[: input_ids.shape[1]]) * keep
        return F.normalize(self.text_mlp(h.sum(1) / keep.sum(1).clamp(min=1)), dim=-1)

    def forward(self, video: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Cosine similarity per (video, caption) pair, ``[B]``."""
        return (self.encode_video(video) * self.encode_text(input_ids)).sum(-1)


def build_video_tokenizer():
    """The toy word-level tokenizer over the image world's words plus ``moving``, ``up``, ``down``."""
    return build_tokenizer(list(vworld.VIDEO_VOCAB))


def train_video_reward(out: str | Path, steps: int = 300, batch: int = 32, frames: int = 8, lr: float = 2e-3,
                       seed: int = 0, log_every: int = 25, threads: int | None = None) -> dict:
    """Train :class:`ToyVideoRewardModel` on rendered clips of the ``train`` captions; save it to ``out``."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tok = build_video_tokenizer()
    model = ToyVideoRewardModel(vocab_size=len(tok), max_tokens=MAX_TOKENS).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    train_caps = [c for c in vworld.all_video_captions() if vworld.video_caption_split(c) == "train"]
    cache: dict[str, torch.Tensor] = {}

    def ids(caps):
        for c in caps:
            if c not in cache:
                cache[c] = tok(c, padding="max_length", max_length=MAX_TOKENS, return_tensors="pt")["input_ids"][0]
        return torch.stack([cache[c] for c in caps])

    t_start, log = time.time(), []
    for step in range(steps):
        caps = [train_caps[i] for i in rng.integers(0, len(train_caps), batch)]
        clips = vworld.render_clips(caps, frames, rng=rng)  # [B, T, 3, H, W]
        still = torch.from_numpy(np.stack([vworld.render_clip(c, 2, rng=rng, still=True)[0] for c in caps]))
        still = still.permute(0, 3, 1, 2).float().div(255).unsqueeze(1)  # [B, 1, 3, H, W]
        feats = model.encode_frames(clips)
        v_pos = model.pool(feats)
        v_rev = model.pool(feats.flip(1))
        v_still = model.pool(model.encode_frames(still).expand(-1, frames, -1))
        # video -> text over [own caption, 3 other directions, content negative(s)]
        cands = []
        for c in caps:
            neg = vworld.video_negatives(c, rng)
            cands.append([c] + neg["direction"] + neg["content"][:1])
        k = min(len(x) for x in cands)
        cands = [x[:k] for x in cands]
        t_emb = model.encode_text(ids([c for x in cands for c in x])).view(batch, k, -1)
        scale = model.logit_scale.clamp(max=math.log(100)).exp()
        target = torch.zeros(batch, dtype=torch.long)
        loss_v2t = F.cross_entropy(scale * torch.einsum("bd,bkd->bk", v_pos, t_emb), target)
        # text -> video over [clip, reversed clip, still clip] for the clip's own caption
        own = t_emb[:, 0]
        lv = torch.stack([(v_pos * own).sum(-1), (v_rev * own).sum(-1), (v_still * own).sum(-1)], 1)
        loss_t2v = F.cross_entropy(scale * lv, target)
        loss = loss_v2t + loss_t2v
        _optim_step(opt, loss, _lr(step, lr, 20, steps))
        _log(log, step, steps, log_every, loss, t_start)
    out = Path(out)
    model.eval().save_pretrained(str(out))
    tok.save_pretrained(str(out))
    meta = {"steps": steps, "batch": batch, "frames": frames, "lr": lr, "seed": seed,
            "seconds": round(time.time() - t_start, 1), "log": log}
    (out / "training.json").write_text(json.dumps(meta, indent=1))
    respect_umask(out)  # safetensors writes 0600 whatever the umask
    return meta


@torch.no_grad()
def video_reward_accuracy(model: ToyVideoRewardModel, tokenizer, split: str = "heldout", per_caption: int = 2,
                          frames: int = 8, seed: int = 123) -> dict:
    """Fraction of clips whose own caption outscores each of its direction / content negatives, and of captions
    for which the clip outscores its time-reversed copy."""
    rng = np.random.default_rng(seed)
    caps = [c for c in vworld.all_video_captions() if split == "all" or vworld.video_caption_split(c) == split]
    caps = [c for c in caps for _ in range(per_caption)]
    clips = vworld.render_clips(caps, frames, rng=rng)

    def ids(cs):
        return tokenizer(cs, padding="max_length", max_length=MAX_TOKENS, return_tensors="pt")["input_ids"]

    pos = model(clips, ids(caps))
    rev = model(clips.flip(1), ids(caps))
    wins = {"direction": [], "content": []}
    for kind in wins:
        for i, c in enumerate(caps):
            for n in vworld.video_negatives(c, rng, split=None)[kind]:
                wins[kind].append(bool(pos[i] > model(clips[i: i + 1], ids([n]))[0]))
    return {"direction": float(np.mean(wins["direction"])), "content": float(np.mean(wins["content"])),
            "reversal": float((pos > rev).float().mean()), "clips": len(caps)}
