"""Toy-world benchmark: sampling throughput, demo wall time, peak RSS, and the peak memory of differentiable
sampling with gradients through the last K = 1, 4 and all steps, with and without per-step checkpointing.

    python benchmarks/toy_bench.py [--threads 2] [--repeats 3] [--out benchmarks/results/toy_bench.json]

Memory on CPU is measured as the growth of the process's peak RSS (``ru_maxrss``) during one forward+backward,
each configuration in a fresh subprocess so that peaks do not mask each other. On CUDA it would be
``torch.cuda.max_memory_allocated``; the figures printed say which one was used. Timings are medians of
``--repeats`` runs measured side by side in one invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _memory_child(k: str, ckpt: bool, batch: int, steps: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    from rewardflow.toy.generator import ToyGenerator
    from rewardflow.rewards.base import load_reward

    gen = ToyGenerator.from_pretrained()
    gen.add_lora(rank=4)
    reward = load_reward("toy_clip")
    prompts = ["a red circle and a blue square"] * batch
    cond = gen.encode_prompts(prompts)
    noise = gen.initial_noise(batch, torch.Generator().manual_seed(0))
    with torch.no_grad():  # warm up allocator / kernels without a graph
        gen.sample(cond, steps, noise=noise)
    before = _rss_mb()
    t0 = time.time()
    grad, kk = ("all", 1) if k == "all" else ("last_k", int(k))
    traj = gen.sample(cond, steps, noise=noise, grad=grad, k=kk, checkpoint=ckpt)
    reward(gen.decode(traj.final), prompts).mean().backward()
    print(json.dumps({"peak_rss_growth_mb": round(_rss_mb() - before, 1), "seconds": round(time.time() - t0, 3)}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/toy_bench.json")
    ap.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._child:
        _memory_child(a._child[0], a._child[1] == "1", a.batch, a.steps, a.threads)
        return

    import torch

    torch.set_num_threads(a.threads)
    from rewardflow.toy.evaluation import eval_prompts
    from rewardflow.toy.generator import ToyGenerator

    results: dict = {"threads": a.threads, "batch": a.batch, "steps": a.steps, "memory_metric": "peak RSS growth (CPU)"}
    gen = ToyGenerator.from_pretrained()
    prompts = (eval_prompts("heldout", 20) * 4)[: a.batch]
    tput = {}
    for steps in (4, 8):
        for g in (1.0, 2.0):
            times = []
            for r in range(a.repeats + 1):
                t0 = time.time()
                gen.generate(prompts, steps, guidance_scale=g, generator=torch.Generator().manual_seed(r))
                if r:  # first run is warm-up
                    times.append(time.time() - t0)
            tput[f"steps{steps}_cfg{g:g}"] = round(len(prompts) / statistics.median(times), 1)
    results["sampling_images_per_s"] = tput
    print("sampling images/s (median of", a.repeats, "):", tput, flush=True)

    mem = {}
    for k in ("1", "4", "all"):
        for ckpt in (True, False):
            out = subprocess.run([sys.executable, __file__, "--threads", str(a.threads), "--batch", str(a.batch),
                                  "--steps", str(a.steps), "--_child", k, "1" if ckpt else "0"],
                                 capture_output=True, text=True, check=True)
            rec = json.loads(out.stdout.strip().splitlines()[-1])
            mem[f"K={k} checkpoint={'on' if ckpt else 'off'}"] = rec
            print(f"differentiable sampling K={k:>3} checkpointing={'on ' if ckpt else 'off'}: "
                  f"peak RSS +{rec['peak_rss_growth_mb']:.0f} MB, {rec['seconds']:.2f} s", flush=True)
    results["differentiable_sampling_memory"] = mem

    if not a.skip_demo:
        import tempfile

        t0 = time.time()
        with tempfile.TemporaryDirectory() as d:
            out = subprocess.run([sys.executable, "-m", "rewardflow", "demo", "--out", d], capture_output=True,
                                 text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": str(a.threads)})
            summary = json.loads((Path(d) / "summary.json").read_text())
        results["demo"] = {"wall_s_including_imports": round(time.time() - t0, 1),
                           "seconds_total": summary["seconds_total"],
                           "oracle_accuracy_before": summary["oracle_accuracy_before"],
                           "oracle_accuracy_after": summary["oracle_accuracy_after"]}
        print(out.stdout)
        print("demo:", results["demo"], flush=True)
    results["peak_rss_mb_parent"] = round(_rss_mb(), 1)
    print("peak RSS of this process:", results["peak_rss_mb_parent"], "MB")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=1))
    print("wrote", a.out)


if __name__ == "__main__":
    main()
