"""Reproduce the shipped toy video generator: ``rewardflow toy train-video-generator --out DIR``.

Recipe (the image toy's, docs/toy-world.md#generator / :mod:`rewardflow.toy.train`, on clips): rectified flow
(``x_t = (1 - t) x0 + t eps``, target ``eps - x0``, logit-normal t), AdamW (0.9, 0.99), linear warm-up then cosine to
10% of the lr, grad clip 1, EMA 0.995, 10% caption dropout (classifier-free guidance), fresh renders every step
(:func:`rewardflow.toy.video.render_clips`, train split only, so the held-out (colour, shape) pairs stay unseen).

The base model is made *misaligned by its data*, as real models are: a fraction ``caption_noise`` of training
captions is replaced by a false one — half of them with a wrong direction, half with a minimal content edit (colour
or shape, :func:`rewardflow.toy.video.video_negatives`) — so alignment has headroom. Budgeted by steps, not minutes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rewardflow.toy import video as vworld
from rewardflow.toy.train import _ema_update, _log, _lr, _optim_step, _save_generator
from rewardflow.toy.video_pipeline import ToyVideoFlowPipeline


def train_captions(split: str = "train") -> list[str]:
    """The video captions of one split (``train``: 68 captions, ``heldout``: 16)."""
    return [c for c in vworld.all_video_captions() if vworld.video_caption_split(c) == split]


def _noisy_caption(caption: str, rng: np.random.Generator) -> str:
    neg = vworld.video_negatives(caption, rng, split="train")
    pool = neg["direction"] if (rng.random() < 0.5 or not neg["content"]) else neg["content"]
    return pool[int(rng.integers(len(pool)))]


def train_video_generator(out: str | Path, steps: int = 900, batch: int = 24, lr: float = 2e-3, seed: int = 0,
                          frames: int = 4, caption_noise: float = 0.2, cfg_dropout: float = 0.1,
                          ema_decay: float = 0.995, warmup: int = 50, log_every: int = 25,
                          threads: int | None = None, save_every: int = 0,
                          init_from: str | Path | None = None) -> dict:
    """Train the toy text-to-video model and save the EMA weights (fp16) as a ``ToyVideoFlowPipeline`` directory.
    ``save_every``: also save the EMA weights every N steps (a usable model if the run is cut short).
    ``init_from``: continue from a saved toy video pipeline (its EMA weights; a fresh optimizer, warm-up and
    cosine schedule) instead of starting from random weights; its frame count must equal ``frames``."""
    if threads:
        torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    if init_from is not None:
        pipe = ToyVideoFlowPipeline.from_pretrained(str(init_from), dtype=torch.float32)
        if pipe.num_frames != frames:
            raise ValueError(f"--init-from {init_from} generates {pipe.num_frames} frames but frames={frames}; "
                             f"pass frames={pipe.num_frames} (the frame count is part of the UNet's channels)")
    else:
        pipe = ToyVideoFlowPipeline.from_config_dict(frames=frames, seed=seed)
    modules = torch.nn.ModuleDict({"unet": pipe.unet, "text_encoder": pipe.text_encoder}).train()
    opt = torch.optim.AdamW(modules.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    ema = {k: v.detach().clone() for k, v in modules.state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    pool = train_captions("train")
    t_start, log = time.time(), []

    def _meta(done: int) -> dict:
        return {"steps": done, "planned_steps": steps, "batch": batch, "lr": lr, "seed": seed, "frames": frames,
                "init_from": None if init_from is None else str(init_from),
                "caption_noise": caption_noise, "cfg_dropout": cfg_dropout, "ema_decay": ema_decay,
                "warmup": warmup, "seconds": round(time.time() - t_start, 1), "log": log}

    for step in range(steps):
        caps = [pool[int(i)] for i in rng.integers(len(pool), size=batch)]
        videos = vworld.render_clips(caps, frames, rng=rng)
        train_caps = []
        for c in caps:
            u = rng.random()
            train_caps.append("" if u < cfg_dropout else
                              _noisy_caption(c, rng) if u < cfg_dropout + caption_noise else c)
        x0 = pipe.encode_videos(videos)
        noise = torch.randn(x0.shape, generator=g)
        emb = pipe.encode_prompt(train_caps, "cpu")
        t = torch.sigmoid(torch.randn(batch, generator=g))  # logit-normal t (SD3 paper, Sec. 3.1; docs/algorithms.md#timestep-sampling)
        s_ = t.view(-1, 1, 1, 1)
        loss = F.mse_loss(pipe.denoise((1 - s_) * x0 + s_ * noise, t * 1000, emb), noise - x0)
        if _optim_step(opt, loss, _lr(step, lr, warmup, steps)):
            _ema_update(ema, modules, min(ema_decay, (1 + step) / (10 + step)))
        _log(log, step, steps, log_every, loss, t_start)
        if save_every and (step + 1) % save_every == 0 and step + 1 < steps:
            _save_generator(pipe, modules, ema, out, _meta(step + 1))
    meta = _meta(steps)
    _save_generator(pipe, modules, ema, out, meta)
    return meta


@torch.no_grad()
def generator_accuracy(pipe_or_path, split: str = "train", per_caption: int = 4, steps: int = 8,
                       guidance_scale: float = 1.0, seed: int = 0) -> dict:
    """Oracle accuracy of a toy video generator on one caption split: ``exact`` (content and motion both right),
    ``content`` (every frame shows the caption's object), ``motion`` (the detected direction is the caption's)
    and the mean partial-credit ``score``."""
    pipe = pipe_or_path if isinstance(pipe_or_path, ToyVideoFlowPipeline) else \
        ToyVideoFlowPipeline.from_pretrained(str(pipe_or_path), dtype=torch.float32)
    caps = [c for c in train_captions(split) for _ in range(per_caption)]
    videos = pipe(caps, num_inference_steps=steps, guidance_scale=guidance_scale,
                  generator=torch.Generator().manual_seed(seed))
    return oracle_summary(videos, caps)


def oracle_summary(videos: torch.Tensor, captions: list[str]) -> dict:
    """Content / motion / exact accuracy and mean partial-credit score of ``[N, T, 3, H, W]`` videos."""
    content, motion, exact, score = [], [], [], []
    for v, c in zip(videos, captions):
        moves = vworld.clip_direction(v) == vworld.parse_video_caption(c).direction
        s = vworld.video_oracle_score(v, c)  # 0.5 * content fraction + 0.5 * direction correct
        content.append(s - 0.5 * moves >= 0.5 - 1e-6)
        motion.append(moves)
        exact.append(content[-1] and moves)
        score.append(s)
    return {"n": len(captions), "exact": float(np.mean(exact)), "content": float(np.mean(content)),
            "motion": float(np.mean(motion)), "score": float(np.mean(score))}


def save_meta(out: str | Path, extra: dict) -> None:
    p = Path(out) / "training.json"
    meta = json.loads(p.read_text()) if p.exists() else {}
    meta.update(extra)
    p.write_text(json.dumps(meta, indent=1))
