"""``rewardflow toy ...``: the embedded toy world's tools: rebuild the shipped weights (image generator, toy CLIP
rewards, video reward, video generator), evaluate them against the exact oracles, render clips.

The world itself (grammar, renderer, oracles, shipped models) is described in docs/toy-world.md.
Like every command module, the library is imported inside the run functions (see rewardflow/commands/__init__.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from rewardflow.commands._args import nonneg_float, nonneg_int, positive_float, positive_int, unit_float


def _train_generator(a) -> int:
    from rewardflow.toy.train import train_generator

    train_generator(a.out, steps=a.steps, batch=a.batch, lr=a.lr, seed=a.seed, caption_noise=a.caption_noise,
                    init_from=a.init_from, warmup=a.warmup, parametrization=a.parametrization,
                    save_every=a.save_every)
    print(f"saved the toy generator pipeline to {a.out}")
    return 0


def _train_reward(a) -> int:
    from rewardflow.toy.train import train_reward

    train_reward(a.out, steps=a.steps, batch=a.batch, lr=a.lr, seed=a.seed, adv_eps=a.adv_eps,
                 swap_negatives=a.swap_negatives)
    print(f"saved the toy reward to {a.out}")
    return 0


def _train_all(a) -> int:
    """The shipped recipe, in order: generator, standard reward, adversarially trained reward."""
    from rewardflow.toy.train import train_generator, train_reward

    out = Path(a.out)
    train_generator(out / "generator_stage1", steps=800)  # the shipped stage 1 (assets/toy/generator/training_stage1.json)
    train_generator(out / "generator", steps=500, lr=5e-4, seed=1, init_from=out / "generator_stage1", warmup=20)
    train_reward(out / "reward")
    train_reward(out / "reward_adv", steps=500, seed=2, adv_eps=0.06)
    print(f"saved generator, reward and reward_adv under {out}")
    return 0


def _eval(a) -> int:
    from rewardflow.toy.evaluation import eval_prompts, generator_accuracy
    from rewardflow.toy.generator import ToyGenerator

    gen = ToyGenerator.from_pretrained(a.generator, guidance_scale=a.guidance)
    out = {}
    for split in ("train", "heldout"):
        rep = generator_accuracy(gen, eval_prompts(split, a.per_category, seed=a.seed), steps=a.steps, seed=a.seed)
        out[split] = {k: rep[k] for k in ("accuracy", "partial", "per_category")}
    print(json.dumps(out, indent=1))
    return 0


def _train_video_reward(a) -> int:
    from rewardflow.toy.video_reward import train_video_reward

    meta = train_video_reward(a.out, steps=a.steps, batch=a.batch, frames=a.frames, lr=a.lr, seed=a.seed)
    print(f"saved the toy video reward to {a.out} ({meta['seconds']} s)")
    return 0


def _eval_video_reward(a) -> int:
    from rewardflow.toy.assets import asset_path
    from rewardflow.toy.video_reward import video_reward_accuracy
    from rewardflow.toy.video_rewards import ToyVideoReward

    r = ToyVideoReward(a.reward or asset_path("video_reward"))
    out = {s: video_reward_accuracy(r.model, r.tokenizer, split=s, per_caption=a.per_caption, frames=a.frames,
                                    seed=a.seed) for s in ("train", "heldout")}
    print(json.dumps(out, indent=1))
    return 0


def _render_video(a) -> int:
    import numpy as np
    import torch

    from rewardflow.io.video import save_video
    from rewardflow.toy.video import render_clip

    clip = render_clip(a.caption, frames=a.frames, rng=np.random.default_rng(a.seed))
    path = save_video(torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 255, a.out, fps=a.fps)
    print(f"wrote {path}")
    return 0


def _train_video_generator(a) -> int:
    from rewardflow.toy.video_gen_train import train_video_generator

    meta = train_video_generator(a.out, steps=a.steps, batch=a.batch, lr=a.lr, seed=a.seed, frames=a.frames,
                                 caption_noise=a.caption_noise, threads=a.threads, save_every=a.save_every,
                                 init_from=a.init_from, warmup=a.warmup)
    print(f"saved the toy video generator to {a.out} ({meta['seconds']} s)")
    return 0


def _eval_video_generator(a) -> int:
    from rewardflow.toy.assets import asset_path
    from rewardflow.toy.video_gen_train import generator_accuracy as video_generator_accuracy

    path = a.model or asset_path("video_generator")
    out = {s: video_generator_accuracy(path, split=s, per_caption=a.per_caption, steps=a.steps,
                                       guidance_scale=a.guidance_scale, seed=a.seed) for s in ("train", "heldout")}
    print(json.dumps(out, indent=1))
    return 0


def register(subparsers) -> None:
    t = subparsers.add_parser("toy", help="toy-world tools: rebuild the shipped weights, evaluate them, render clips")
    tsub = t.add_subparsers(dest="toy_command", required=True)
    tg = tsub.add_parser("train-generator", help="train the toy text-to-image flow model (stage 1: ~20 min on 2 cores)")
    tg.add_argument("--out", required=True)
    tg.add_argument("--steps", type=positive_int, default=800)
    tg.add_argument("--batch", type=positive_int, default=128)
    tg.add_argument("--lr", type=positive_float, default=2e-3)
    tg.add_argument("--seed", type=int, default=0)
    tg.add_argument("--caption-noise", type=unit_float, default=0.2, help="fraction of deliberately wrong captions")
    tg.add_argument("--init-from", default=None, help="continue from a saved toy pipeline (second stage)")
    tg.add_argument("--warmup", type=nonneg_int, default=100, help="lr warm-up steps")
    tg.add_argument("--parametrization", choices=("flow", "epsilon"), default="flow",
                    help="flow (rectified flow, assets/toy/generator) or epsilon (DDPM/DDIM, assets/toy/generator_eps)")
    tg.add_argument("--save-every", type=nonneg_int, default=0,
                    help="also save the EMA weights every N steps (0 = end only)")
    tg.set_defaults(fn=_train_generator)
    tr = tsub.add_parser("train-reward", help="train the tiny CLIP reward (~8 min on 2 cores)")
    tr.add_argument("--out", required=True)
    tr.add_argument("--steps", type=positive_int, default=700)
    tr.add_argument("--batch", type=positive_int, default=128)
    tr.add_argument("--lr", type=positive_float, default=2e-3)
    tr.add_argument("--seed", type=int, default=1)
    tr.add_argument("--adv-eps", type=nonneg_float, default=0.0, help="FGSM adversarial training radius (0 = off)")
    tr.add_argument("--swap-negatives", type=nonneg_int, default=3,
                    help="attribute-swap negatives per two-object image")
    tr.set_defaults(fn=_train_reward)
    ta = tsub.add_parser("train-all", help="reproduce all shipped toy weights (generator, reward, reward_adv)")
    ta.add_argument("--out", required=True,
                    help="writes OUT/generator, OUT/reward, OUT/reward_adv (assets/toy replaces the shipped ones)")
    ta.set_defaults(fn=_train_all)
    te = tsub.add_parser("eval", help="oracle accuracy of a toy generator on train / held-out prompts")
    te.add_argument("--generator", default=None)
    te.add_argument("--per-category", type=positive_int, default=20)
    te.add_argument("--steps", type=positive_int, default=4)
    te.add_argument("--guidance", type=nonneg_float, default=1.0)
    te.add_argument("--seed", type=int, default=0)
    te.set_defaults(fn=_eval)
    vr = tsub.add_parser("train-video-reward", help="train the tiny toy video reward (~5 min on one core)")
    vr.add_argument("--out", required=True)
    vr.add_argument("--steps", type=positive_int, default=400)
    vr.add_argument("--batch", type=positive_int, default=32)
    vr.add_argument("--frames", type=positive_int, default=8)
    vr.add_argument("--lr", type=positive_float, default=2e-3)
    vr.add_argument("--seed", type=int, default=0)
    vr.set_defaults(fn=_train_video_reward)
    ve = tsub.add_parser("eval-video-reward", help="pairwise accuracy of a toy video reward vs its direction/content/reversal negatives")
    ve.add_argument("--reward", default=None, help="toy video reward directory (default: shipped assets)")
    ve.add_argument("--per-caption", type=positive_int, default=2)
    ve.add_argument("--frames", type=positive_int, default=8)
    ve.add_argument("--seed", type=int, default=123)
    ve.set_defaults(fn=_eval_video_reward)
    rv = tsub.add_parser("render-video", help="render one caption ('a red circle moving left') to .mp4 or .gif")
    rv.add_argument("caption")
    rv.add_argument("--out", required=True)
    rv.add_argument("--frames", type=positive_int, default=16)
    rv.add_argument("--fps", type=positive_float, default=8.0)
    rv.add_argument("--seed", type=int, default=0)
    rv.set_defaults(fn=_render_video)
    vg = tsub.add_parser("train-video-generator", help="train the toy text-to-video flow model (~20 min on one core)")
    vg.add_argument("--out", required=True)
    vg.add_argument("--steps", type=positive_int, default=900)
    vg.add_argument("--batch", type=positive_int, default=24)
    vg.add_argument("--lr", type=positive_float, default=2e-3)
    vg.add_argument("--frames", type=positive_int, default=4)
    vg.add_argument("--caption-noise", type=unit_float, default=0.2)
    vg.add_argument("--seed", type=int, default=0)
    vg.add_argument("--threads", type=positive_int, default=None)
    vg.add_argument("--save-every", type=nonneg_int, default=0)
    vg.add_argument("--warmup", type=nonneg_int, default=50, help="linear warm-up steps before the cosine decay")
    vg.add_argument("--init-from", default=None,
                   help="continue from a saved toy video pipeline (e.g. assets/toy/video_generator)")
    vg.set_defaults(fn=_train_video_generator)
    vge = tsub.add_parser("eval-video-generator", help="oracle content / motion accuracy on train and held-out captions")
    vge.add_argument("--model", default=None, help="pipeline directory (default: shipped assets/toy/video_generator)")
    vge.add_argument("--per-caption", type=positive_int, default=4)
    vge.add_argument("--steps", type=positive_int, default=8)
    vge.add_argument("--guidance-scale", type=nonneg_float, default=1.0)
    vge.add_argument("--seed", type=int, default=0)
    vge.set_defaults(fn=_eval_video_generator)
