"""Peak memory and time of differentiable sampling vs the number of steps backpropagated (K = 1, 2, 4, all), with
and without per-step gradient checkpointing, on a tiny random SD3 pipeline (real ``StableDiffusion3Pipeline``
classes, 64x64 latents = 1024 image tokens, so activations dominate the weights).

    python benchmarks/generator_memory.py [--threads 1] [--steps 8] [--batch 2] [--device cpu|cuda]
                                          [--out benchmarks/results/generator_memory.json]

Each configuration runs in a fresh subprocess: load the pipeline through ``load_generator``, attach a LoRA, warm
up with one no-grad sample, then one differentiable ``gen.sample(..., grad="last_k"|"all")`` + VAE decode +
backward of the mean pixel (the gradient path a reward takes). Two memory figures:

* live tensors: the peak of the tensor memory allocated during that run (weights excluded), from the profiler's
  allocation / free events on CPU (a second, identical run under ``torch.profiler`` with ``profile_memory``), or
  ``torch.cuda.max_memory_allocated`` growth on CUDA. This is what the sampler keeps alive.
* peak RSS growth (``ru_maxrss``, the helper ``toy_bench.py`` uses) of the timed run: what the OS sees, allocator
  retention included. With glibc's default *dynamic* mmap threshold, freed activation blocks stay in the heap and
  RSS overstates live memory; ``--mmap-threshold 65536`` (``MALLOC_MMAP_THRESHOLD_`` in the children) fixes the
  threshold so large blocks go back to the OS.

Target (issue 4): with checkpointing, the peak grows by at most 10% from K = 1 to K = all (judged on live tensors).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from toy_bench import _rss_mb  # the peak-RSS helper of benchmarks/toy_bench.py

PROMPTS = ["a red circle and a blue square", "two green cats on a photo"]


def _peak_mb(device: str) -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else _rss_mb()


def _child(pipe_dir: str, k: str, ckpt: bool, a) -> None:
    import torch

    torch.set_num_threads(a.threads)
    from rewardflow.pipelines.registry import load_generator

    size = a.latent_size * 2  # tiny VAE factor 2
    gen = load_generator(pipe_dir, height=size, width=size, max_sequence_length=16, guidance_scale=a.cfg,
                         device=a.device)
    gen.add_lora(rank=4)
    prompts = (PROMPTS * a.batch)[: a.batch]
    cond = gen.encode_prompts(prompts)
    noise = gen.initial_noise(a.batch, torch.Generator().manual_seed(0))
    with torch.no_grad():  # warm up kernels / allocator without a graph
        gen.decode(gen.sample(cond, a.steps, noise=noise).final)
    if a.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = _peak_mb(a.device)
    t0 = time.time()
    grad, kk = ("all", 1) if k == "all" else ("last_k", int(k))

    def run():
        traj = gen.sample(cond, a.steps, noise=noise, grad=grad, k=kk, checkpoint=ckpt)
        gen.decode(traj.final).mean().backward()
        return traj

    traj = run()
    if a.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.time() - t0
    assert all(p.grad is not None for p in gen.trainable_parameters())
    rec = {"seconds": round(seconds, 3), "grad_steps": len(traj.grad_steps)}
    if a.device == "cuda":
        rec["live_peak_mb"] = round(_peak_mb(a.device) - before, 1)
    else:
        rec["rss_peak_growth_mb"] = round(_peak_mb(a.device) - before, 1)
        rec["rss_peak_total_mb"] = round(_peak_mb(a.device), 1)
        gen.denoiser.zero_grad(set_to_none=True)
        rec["live_peak_mb"] = round(_live_peak_cpu(run) / 2**20, 1)
    print(json.dumps(rec))


def _live_peak_cpu(fn) -> float:
    """Peak bytes of live CPU tensors allocated inside ``fn()``: running sum of the profiler's memory events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()  # negative for frees
        peak = max(peak, live)
    return peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--cfg", type=float, default=4.5, help="guidance scale (> 1: CFG doubles the batch)")
    ap.add_argument("--latent-size", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--mmap-threshold", type=int, default=None,
                    help="set MALLOC_MMAP_THRESHOLD_ (bytes) in the children (glibc); default: glibc's dynamic one")
    ap.add_argument("--out", default="benchmarks/results/generator_memory.json")
    ap.add_argument("--_child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._child:
        _child(a._child[0], a._child[1], a._child[2] == "1", a)
        return

    from rewardflow.testing.tiny_flow import build_tiny_sd3

    metric = ("live = torch.cuda.max_memory_allocated growth" if a.device == "cuda" else
              "live = peak of profiler-tracked CPU tensor allocations; RSS = ru_maxrss")
    ks = [k for k in ("1", "2", "4") if int(k) < a.steps] + ["all"]
    rows = {}
    with tempfile.TemporaryDirectory() as d:
        build_tiny_sd3(d, latent_size=a.latent_size, layers=a.layers, head_dim=16, heads=4)
        print(f"tiny SD3: {a.layers} MMDiT blocks, width 64, {a.latent_size}x{a.latent_size} latents "
              f"({(a.latent_size // 2) ** 2} image tokens), batch {a.batch}, CFG {a.cfg}, {a.steps} steps, "
              f"{a.threads} thread(s), {a.device}; memory = {metric}", flush=True)
        print(f"{'K':>4} {'checkpoint':>10} {'live MB':>8} {'RSS +MB':>8} {'RSS MB':>7} {'seconds':>8}", flush=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
        if a.mmap_threshold:
            env["MALLOC_MMAP_THRESHOLD_"] = str(a.mmap_threshold)
        for ckpt in (True, False):
            for k in ks:
                cmd = [sys.executable, __file__, "--threads", str(a.threads), "--steps", str(a.steps), "--batch",
                       str(a.batch), "--cfg", str(a.cfg), "--latent-size", str(a.latent_size), "--device", a.device,
                       "--_child", d, k, "1" if ckpt else "0"]
                out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
                if out.returncode:
                    raise RuntimeError(f"child {k} {ckpt} failed:\n{out.stderr[-3000:]}")
                rec = json.loads(out.stdout.strip().splitlines()[-1])
                rows[f"K={k} checkpoint={'on' if ckpt else 'off'}"] = rec
                print(f"{k:>4} {'on' if ckpt else 'off':>10} {rec['live_peak_mb']:>8.1f} "
                      f"{rec.get('rss_peak_growth_mb', float('nan')):>8.1f} "
                      f"{rec.get('rss_peak_total_mb', float('nan')):>7.0f} {rec['seconds']:>8.2f}", flush=True)
    first, last = rows["K=1 checkpoint=on"], rows["K=all checkpoint=on"]
    growth = {key: (last[key] - first[key]) / max(first[key], 1e-9)
              for key in ("live_peak_mb", "rss_peak_growth_mb", "rss_peak_total_mb") if key in first}
    result = {"config": {"layers": a.layers, "width": 64, "latent_size": a.latent_size, "batch": a.batch,
                         "cfg": a.cfg, "steps": a.steps, "threads": a.threads, "device": a.device,
                         "malloc_mmap_threshold": a.mmap_threshold},
              "memory_metric": metric, "runs": rows,
              "checkpointed_growth_1_to_all": {k: round(v, 4) for k, v in growth.items()},
              "target_met": growth["live_peak_mb"] <= 0.10}
    print("with checkpointing, K=1 -> all: " + ", ".join(f"{k} {v:+.1%}" for k, v in growth.items())
          + f" (target <= +10% on live tensors: {'met' if result['target_met'] else 'MISSED'})")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print("wrote", a.out)


if __name__ == "__main__":
    main()
