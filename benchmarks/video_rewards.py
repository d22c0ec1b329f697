"""Video-reward costs: the segmental reward vs the number of frames, and video decoding speed per backend.

    python benchmarks/video_rewards.py [--threads 1] [--repeats 5] [--out benchmarks/results/video_rewards.json]

1. ``segmental(toy_clip)`` (shipped toy CLIP, S = 4 segments, TSN selection, batch 4, 32x32) on videos of 8, 16,
   32 and 64 frames: median time of a forward and of a forward + backward to the pixels. The image reward sees
   ``B * S`` frames whatever the length, so the time should stay flat (only the frame gather grows).
   ``toy_video`` (the temporal toy reward, which encodes every frame) is timed alongside for contrast.
2. Decoding a 64-frame 256x256 libx264 mp4 (written with ``save_video``): frames/s of ``load_video`` with each
   available backend (decord when installed, PyAV), all frames and 8 uniformly sampled frames.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def bench_segmental(repeats: int) -> dict:
    import torch

    from rewardflow.rewards.base import load_reward

    seg = load_reward("segmental(toy_clip)", segments=4, seed=0)
    temporal = load_reward("toy_video")
    prompts = ["a red circle moving left"] * 4
    out = {}
    for T in (8, 16, 32, 64):
        video = torch.rand(4, T, 3, 32, 32)

        def fwd(r=seg):
            with torch.no_grad():
                r(video, prompts)

        def fwd_bwd(r=seg):
            x = video.clone().requires_grad_(True)
            r(x, prompts).sum().backward()

        out[T] = {"segmental_forward_ms": 1e3 * _median_time(fwd, repeats),
                  "segmental_forward_backward_ms": 1e3 * _median_time(fwd_bwd, repeats),
                  "toy_video_forward_ms": 1e3 * _median_time(lambda: fwd(temporal), repeats)}
        print(f"T={T:3d}  segmental fwd {out[T]['segmental_forward_ms']:7.2f} ms  fwd+bwd "
              f"{out[T]['segmental_forward_backward_ms']:7.2f} ms  | toy_video fwd {out[T]['toy_video_forward_ms']:7.2f} ms",
              flush=True)
    return out


def bench_decode(repeats: int) -> dict:
    import torch

    from rewardflow.io.video import available_backends, load_video, save_video, uniform_indices

    out = {}
    with tempfile.TemporaryDirectory() as d:
        T = 64
        x = torch.linspace(0, 1, 256)
        video = torch.stack([torch.stack([x.view(1, -1).expand(256, -1).roll(4 * t, 1),
                                          x.view(-1, 1).expand(-1, 256), torch.full((256, 256), t / T)])
                             for t in range(T)])
        path = save_video(video, Path(d) / "bench.mp4", fps=24)
        for backend in available_backends():
            t_all = _median_time(lambda: load_video(path, backend=backend), repeats)
            t_8 = _median_time(lambda: load_video(path, uniform_indices(T, 8), backend=backend), repeats)
            out[backend] = {"all_frames_fps": T / t_all, "sampled_8_ms": 1e3 * t_8}
            print(f"decode {backend:6s}: all 64 frames {T / t_all:8.1f} frames/s; 8 sampled frames {1e3 * t_8:6.1f} ms",
                  flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="benchmarks/results/video_rewards.json")
    a = p.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    res = {"threads": a.threads, "repeats": a.repeats, "segmental_vs_frames": bench_segmental(a.repeats),
           "decode": bench_decode(a.repeats)}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
