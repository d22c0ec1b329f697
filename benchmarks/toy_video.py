"""Toy video world: held-out oracle accuracy (content and motion) of the toy text-to-video generator before and after
InstructVideo reward fine-tuning and Flow-DPO at an equal budget, and the peak memory of InstructVideo's loss +
backward vs the number of frames, with and without frame-subset decoding.

    python benchmarks/toy_video.py [--model DIR] [--steps 30] [--batch 8] [--per-caption 4] [--sample-steps 8]
                                   [--threads 1] [--skip-dpo] [--out benchmarks/results/toy_video.json]

Accuracy: every held-out caption (16, (colour, shape) pairs never seen in training) x ``per_caption`` videos, the
same fixed noise before and after, ODE sampling; the exact oracle (:mod:`rewardflow.toy.video`) gives ``content``
(every frame shows exactly the caption's object), ``motion`` (the detected direction is the caption's), ``exact``
(both) and the partial-credit ``score``. Both methods run through the shared trainer (``rewardflow train``) with the
same steps, prompts per step, LoRA rank and reward (the tiny video reward ``toy_video``, which sees content and
motion), each with the lr of its shipped config or one ``--lr`` for all; InstructVideo additionally with ``segmental(toy_clip)`` (SegVR +
TAR over the image reward, which sees content only).

Memory: a freshly initialised toy video pipeline per frame count (same architecture, ``F * 12`` latent channels),
one InstructVideo ``loss`` + ``backward`` with ``segmental(toy_clip)`` (4 segments); the peak of live CPU tensors
(torch profiler memory events, ``generator_memory._live_peak_cpu``). The toy pipeline decodes by a reshape, so
frame-subset decoding cannot save anything there; the same measurement on a tiny random Wan 2.1 pipeline (real causal
VAE, ``--wan-frames``, ``--wan-size``) shows what it saves when a VAE decodes. ``--memory-only`` reruns just these.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _accuracy(gen, captions, per_caption: int, steps: int, seed: int = 0) -> dict:
    from rewardflow.toy.video_gen_train import oracle_summary

    caps = [c for c in captions for _ in range(per_caption)]
    noise = torch.randn((len(caps), *gen.latent_shape), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        videos = torch.cat([gen.generate(caps[i:i + 64], steps, noise=noise[i:i + 64]) for i in range(0, len(caps), 64)])
    return oracle_summary(videos, caps)


def _train(config: str, overrides: list[str]) -> tuple[str, float]:
    from rewardflow.align.trainer import Trainer, load_train_config

    tcfg, mcfg = load_train_config(str(ROOT / config), overrides)
    t = time.time()
    summary = Trainer(tcfg, mcfg).train()
    return summary["final"], time.time() - t


def _run_method(name, config, overrides, model, captions, a) -> dict:
    from rewardflow.pipelines.registry import load_generator

    rec: dict = {"config": config, "overrides": overrides}
    try:
        final, secs = _train(config, overrides)
        gen = load_generator(model, adapter="toy_video")
        gen.load_lora(final, trainable=False)
        rec.update({"train_seconds": round(secs, 1), "heldout": _accuracy(gen, captions, a.per_caption,
                                                                        a.sample_steps)})
    except Exception as e:  # noqa: BLE001 - a method that does not run on video is a result, recorded
        rec["error"] = f"{type(e).__name__}: {e}"
    print(name, json.dumps(rec), flush=True)
    return rec


def _measure(gen, frames: int, source: str, batch: int, sample_steps: int, **extra) -> list[dict]:
    """Peak live memory of one InstructVideo loss + backward with ``segmental(toy_clip)``, frame subset on / off."""
    from generator_memory import _live_peak_cpu

    from rewardflow.align.methods.instructvideo import InstructVideo, InstructVideoConfig
    from rewardflow.align.method import MethodContext
    from rewardflow.rewards.base import load_reward

    reward = load_reward("segmental(toy_clip)", selection="first")
    prompts = (["a red circle moving left", "a blue square moving up", "a green triangle moving down",
                "a yellow circle moving right"] * batch)[:batch]
    out = []
    for subset in (True, False):
        ctx = MethodContext(generator=gen, reward=reward, rng=torch.Generator().manual_seed(0),
                            sample_steps=sample_steps, batch_size=len(prompts))
        m = InstructVideo(InstructVideoConfig(source=source, frame_subset=subset), ctx)
        batch_ = m.collect(prompts, 0)[0]

        def step():
            loss, _ = m.loss(batch_, 0)
            loss.backward()
            gen.denoiser.zero_grad(set_to_none=True)

        step()  # warm-up
        t = time.time()
        peak = _live_peak_cpu(step)
        rec = {"frames": frames, "frame_subset": subset, "batch": len(prompts), **extra,
               "live_peak_mb": round(peak / 2**20, 2), "seconds": round(time.time() - t, 2)}
        print("memory", json.dumps(rec), flush=True)
        out.append(rec)
    return out


def _memory(frames_list, batch: int) -> list[dict]:
    """Toy video pipeline: frames are stacked into channels, so decoding is a reshape (no VAE)."""
    from rewardflow.toy.video_generator import ToyVideoGenerator
    from rewardflow.toy.video_pipeline import ToyVideoFlowPipeline

    out = []
    for frames in frames_list:
        gen = ToyVideoGenerator(ToyVideoFlowPipeline.from_config_dict(frames=frames, seed=0))
        gen.denoiser.requires_grad_(True)
        out += _measure(gen, frames, "toy", batch, sample_steps=8)
    return out


def _memory_wan(frames_list, size: int, batch: int) -> list[dict]:
    """A tiny random Wan 2.1 pipeline (real ``WanTransformer3DModel`` + causal ``AutoencoderKLWan``, x4 temporal,
    ``rewardflow.testing.tiny_video.build_tiny_wan``): here the VAE decode is real, so decoding only the latent
    prefix that holds the reward's frames cuts the activations kept for backward."""
    from rewardflow.testing.tiny_video import TEXT_LEN, build_tiny_wan
    from rewardflow.pipelines.wan import WanGenerator

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_wan(tmp)
        for frames in frames_list:
            gen = WanGenerator.from_pretrained(tmp, num_frames=frames, height=size, width=size,
                                               max_sequence_length=TEXT_LEN, guidance_scale=1.0)
            gen.denoiser.requires_grad_(True)
            out += _measure(gen, frames, "sample", batch, sample_steps=4, model="tiny-wan", size=size)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="toy video pipeline dir (default: assets/toy/video_generator)")
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps per method")
    ap.add_argument("--batch", type=int, default=8, help="prompts per step")
    ap.add_argument("--per-caption", type=int, default=4)
    ap.add_argument("--sample-steps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lr", type=float, default=None, help="one lr for every method (default: each config's)")
    ap.add_argument("--skip-dpo", action="store_true")
    ap.add_argument("--frames", default="4,8,16", help="frame counts of the memory measurement")
    ap.add_argument("--wan-frames", default="9,17,33", help="frame counts of the tiny-Wan memory measurement "
                                                             "('' to skip)")
    ap.add_argument("--wan-size", type=int, default=128, help="tiny-Wan frame height = width (pixels)")
    ap.add_argument("--memory-only", action="store_true", help="only the memory measurements (merged into --out)")
    ap.add_argument("--out", default="benchmarks/results/toy_video.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from rewardflow.pipelines.registry import load_generator
    from rewardflow.toy.assets import asset_path
    from rewardflow.toy.video_gen_train import train_captions

    if a.memory_only:
        res = json.loads(Path(a.out).read_text()) if Path(a.out).is_file() else {}
        res["memory"] = _memory([int(f) for f in a.frames.split(",")], batch=4)
        if a.wan_frames:
            res["memory_wan"] = _memory_wan([int(f) for f in a.wan_frames.split(",")], a.wan_size, batch=2)
        Path(a.out).write_text(json.dumps(res, indent=1))
        print(f"wrote {a.out}")
        return
    model = str(a.model or asset_path("video_generator"))
    heldout, train = train_captions("heldout"), train_captions("train")
    base = load_generator(model, adapter="toy_video")
    t0 = time.time()
    res: dict = {"model": model, "steps": a.steps, "lr": a.lr, "batch": a.batch, "per_caption": a.per_caption,
                 "sample_steps": a.sample_steps, "threads": a.threads,
                 "before": {"heldout": _accuracy(base, heldout, a.per_caption, a.sample_steps),
                            "train": _accuracy(base, train, max(1, a.per_caption // 2), a.sample_steps)}}
    print("before", json.dumps(res["before"]), flush=True)
    common = [f"model={model}", "adapter=toy_video", f"max_steps={a.steps}", f"batch_size={a.batch}",
              "lora_rank=4", f"sample_steps={a.sample_steps}", "save_every=0", "report_to=none", 'eval_prompts=""',
              "prompts=configs/toy/video_prompts_train.txt", "resume=never"] + ([f"lr={a.lr}"] if a.lr else [])
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs["instructvideo(toy_video)"] = _run_method(
            "instructvideo", "configs/toy/instructvideo.yaml",
            common + ["reward=toy_video", f"output_dir={tmp}/iv"], model, heldout, a)
        runs["instructvideo(segmental(toy_clip))"] = _run_method(
            "instructvideo_seg", "configs/toy/instructvideo.yaml",
            common + ["reward=segmental(toy_clip)", f"output_dir={tmp}/iv_seg"], model, heldout, a)
        if not a.skip_dpo:
            runs["flow_dpo(toy_video)"] = _run_method(
                "flow_dpo", "configs/toy/flow_dpo.yaml", common + ["reward=toy_video", f"output_dir={tmp}/dpo"],
                model, heldout, a)
    res["after"] = runs
    res["memory"] = _memory([int(f) for f in a.frames.split(",")], batch=4)
    if a.wan_frames:
        res["memory_wan"] = _memory_wan([int(f) for f in a.wan_frames.split(",")], a.wan_size, batch=2)
    res["seconds"] = round(time.time() - t0, 1)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
