"""``rewardflow toy-video``: the toy video world (train the tiny video reward, evaluate it, render clips)."""

from __future__ import annotations

import json


def _train(a) -> int:
    from rewardflow.toy.video_reward import train_video_reward

    meta = train_video_reward(a.out, steps=a.steps, batch=a.batch, frames=a.frames, lr=a.lr, seed=a.seed)
    print(f"saved the toy video reward to {a.out} ({meta['seconds']} s)")
    return 0


def _eval(a) -> int:
    from rewardflow.rewards.toy_video import ToyVideoReward
    from rewardflow.toy.assets import asset_path
    from rewardflow.toy.video_reward import video_reward_accuracy

    r = ToyVideoReward(a.reward or asset_path("video_reward"))
    out = {s: video_reward_accuracy(r.model, r.tokenizer, split=s, per_caption=a.per_caption, frames=a.frames,
                                    seed=a.seed) for s in ("train", "heldout")}
    print(json.dumps(out, indent=1))
    return 0


def _render(a) -> int:
    import numpy as np
    import torch

    from rewardflow.io.video import save_video
    from rewardflow.toy.video import render_clip

    clip = render_clip(a.caption, frames=a.frames, rng=np.random.default_rng(a.seed))
    path = save_video(torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 255, a.out, fps=a.fps)
    print(f"wrote {path}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("toy-video", help="toy video world: train / evaluate the tiny video reward, render clips")
    sub = p.add_subparsers(dest="toy_video_command", required=True)
    t = sub.add_parser("train-video-reward", help="train the tiny toy video reward (~5 min on one core)")
    t.add_argument("--out", required=True)
    t.add_argument("--steps", type=int, default=400)
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--frames", type=int, default=8)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(fn=_train)
    e = sub.add_parser("eval", help="pairwise accuracy of a toy video reward vs its direction/content/reversal negatives")
    e.add_argument("--reward", default=None, help="toy video reward directory (default: shipped assets)")
    e.add_argument("--per-caption", type=int, default=2)
    e.add_argument("--frames", type=int, default=8)
    e.add_argument("--seed", type=int, default=123)
    e.set_defaults(fn=_eval)
    r = sub.add_parser("render", help="render one caption ('a red circle moving left') to .mp4 or .gif")
    r.add_argument("caption")
    r.add_argument("--out", required=True)
    r.add_argument("--frames", type=int, default=16)
    r.add_argument("--fps", type=float, default=8.0)
    r.add_argument("--seed", type=int, default=0)
    r.set_defaults(fn=_render)
