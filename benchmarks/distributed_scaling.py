"""Training throughput (samples / s) with 1 vs 2 CPU processes (gloo) on the toy world, same per-process batch.

Each run is the real command line, ``torchrun --nproc_per_node N -m rewardflow train configs/toy/<method>.yaml``, with
one thread per process (OMP_NUM_THREADS=1, what torchrun sets), so 2 processes use twice the cores of 1: the ideal
ratio is 2.0. Throughput comes from ``metrics.jsonl`` (samples and wall seconds per step), leaving out the first step
(warm-up); process start-up, model loading and the final checkpoint are not counted. Median of ``--repeats`` runs each.

    python benchmarks/distributed_scaling.py [--method flow_dpo] [--steps 6] [--repeats 3]

Writes benchmarks/results/distributed_scaling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHOD_KEYS = {
    "flow_dpo": ["num_samples_per_prompt=4", "timesteps_per_pair=1"],
    "grpo": ["group_size=4", "rollout_steps=4"],
    "rwr": ["num_samples_per_prompt=4"],
    "draft": [],
}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_run(nproc: int, method: str, batch: int, steps: int, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
           str(_port()), "-m", "rewardflow", "train", f"configs/toy/{method}.yaml", f"max_steps={steps}",
           f"batch_size={batch}", "sample_steps=4", "eval_at_start=false", "eval_prompts=''", "report_to=none",
           "save_every=0", "log_every=1", f"output_dir={out}", *METHOD_KEYS.get(method, [])]
    t0 = time.time()
    res = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    recs = [r for r in recs if "seconds" in r]
    first, last = recs[0], recs[-1]  # the first step is warm-up: measure from its end to the last step's end
    sps = (last["samples"] - first["samples"]) / max(1e-9, last["seconds"] - first["seconds"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_processes"] == nproc, summary
    return {"samples_per_s": round(sps, 3), "steps_timed": len(recs) - 1,
            "samples_per_step": summary["effective_batch"]["samples_per_step"], "wall_s": round(wall, 1)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--method", default="flow_dpo", choices=sorted(METHOD_KEYS))
    ap.add_argument("--batch", type=int, default=4, help="prompts per process")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "distributed_scaling.json"))
    a = ap.parse_args(argv)
    runs: dict[int, list[dict]] = {1: [], 2: []}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.repeats):  # interleaved, so a slow period of the machine hits both
            for n in (1, 2):
                r = one_run(n, a.method, a.batch, a.steps, Path(tmp) / f"np{n}_{i}")
                runs[n].append(r)
                print(f"[distributed_scaling] {n} process(es), run {i + 1}: {r['samples_per_s']:.2f} samples/s "
                      f"({r['samples_per_step']} samples/step, wall {r['wall_s']} s)", flush=True)
    med = {n: statistics.median(r["samples_per_s"] for r in runs[n]) for n in runs}
    ratio = med[2] / med[1]
    result = {
        "benchmark": "distributed_scaling", "method": a.method, "prompts_per_process": a.batch, "steps": a.steps,
        "threads_per_process": 1, "backend": "gloo (CPU)", "cpu_count": os.cpu_count(),
        "machine": platform.platform(), "python": platform.python_version(),
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "note": "other work on the machine competes for the cores: compare load_average_1min with cpu_count",
        "median_samples_per_s": {"1_process": med[1], "2_processes": med[2]},
        "ratio_2_over_1": round(ratio, 3), "ideal_ratio": 2.0, "runs": {f"{n}_process": runs[n] for n in runs},
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"[distributed_scaling] median samples/s: 1 process {med[1]:.2f}, 2 processes {med[2]:.2f}; "
          f"ratio 2/1 = {ratio:.2f} (ideal 2.0) -> {a.out}")
    return result


if __name__ == "__main__":
    main()
