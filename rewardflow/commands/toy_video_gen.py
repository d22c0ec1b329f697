"""``rewardflow toy-video-gen``: the tiny toy text-to-video generator (train it, measure its oracle accuracy)."""

from __future__ import annotations

import json


def _train(a) -> int:
    from rewardflow.toy.video_gen_train import train_video_generator

    meta = train_video_generator(a.out, steps=a.steps, batch=a.batch, lr=a.lr, seed=a.seed, frames=a.frames,
                                 caption_noise=a.caption_noise, threads=a.threads, save_every=a.save_every,
                                 init_from=a.init_from, warmup=a.warmup)
    print(f"saved the toy video generator to {a.out} ({meta['seconds']} s)")
    return 0


def _eval(a) -> int:
    from rewardflow.toy.assets import asset_path
    from rewardflow.toy.video_gen_train import generator_accuracy

    path = a.model or asset_path("video_generator")
    out = {s: generator_accuracy(path, split=s, per_caption=a.per_caption, steps=a.steps,
                                 guidance_scale=a.guidance_scale, seed=a.seed) for s in ("train", "heldout")}
    print(json.dumps(out, indent=1))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("toy-video-gen", help="tiny toy text-to-video generator: train it, evaluate it")
    sub = p.add_subparsers(dest="toy_video_gen_command", required=True)
    t = sub.add_parser("train-generator", help="train the toy text-to-video flow model (~20 min on one core)")
    t.add_argument("--out", required=True)
    t.add_argument("--steps", type=int, default=900)
    t.add_argument("--batch", type=int, default=24)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--frames", type=int, default=4)
    t.add_argument("--caption-noise", type=float, default=0.2)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--save-every", type=int, default=0)
    t.add_argument("--warmup", type=int, default=50, help="linear warm-up steps before the cosine decay")
    t.add_argument("--init-from", default=None,
                   help="continue from a saved toy video pipeline (e.g. assets/toy/video_generator)")
    t.set_defaults(fn=_train)
    e = sub.add_parser("eval", help="oracle content / motion accuracy on train and held-out captions")
    e.add_argument("--model", default=None, help="pipeline directory (default: shipped assets/toy/video_generator)")
    e.add_argument("--per-caption", type=int, default=4)
    e.add_argument("--steps", type=int, default=8)
    e.add_argument("--guidance-scale", type=float, default=1.0)
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(fn=_eval)
