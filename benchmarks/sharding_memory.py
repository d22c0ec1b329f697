"""Per-process memory of ddp vs fsdp vs zero2 vs zero3: full fine-tuning (lora_rank=0, AdamW) of a tiny random SD3
(real ``StableDiffusion3Pipeline`` classes; a transformer of ``--layers`` JointTransformerBlocks of width
``--heads`` x ``--head-dim``, so the trained weights dominate) on 2 CPU processes (gloo).

    python benchmarks/sharding_memory.py [--layers 4] [--heads 8] [--head-dim 64] [--steps 2]
                                         [--strategies ddp fsdp zero2 zero3]
                                         [--out benchmarks/results/sharding_memory.json]

Each strategy runs in its own ``torchrun --nproc_per_node 2`` launch of this file (``--worker``): load the pipeline,
build the Trainer (DRaFT, K=1, a mean-brightness reward, 1 prompt per process, 2 sampler steps: small activations),
then train ``--steps`` steps. Per process it records:

* ``expected``: the trainer's memory report (printed at start, stored in summary.json): parameters held after
  sharding (measured from the tensors), gradients, optimizer state and ZeRO's fp32 master partition (from the
  parameter counts);
* ``measured``: the process's resident memory (RSS) right after the trainer is built (``setup``, weights sharded) and
  its peak during the training steps (``peak``, VmHWM reset after set-up), both minus the RSS after the imports
  (``base``), and the optimizer state actually allocated after the steps.

RSS includes what the allocator keeps; the children run with ``MALLOC_MMAP_THRESHOLD_=65536`` so freed large blocks
go back to the OS. The first DeepSpeed launch on a machine JIT-compiles a small op (~1-4 min on 2 cores).
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
ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (peak RSS) to the current RSS (Linux >= 4.0)


def _worker(a) -> None:
    import torch

    torch.set_num_threads(1)
    import gc

    from rewardflow.align.trainer import Trainer, split_config
    from rewardflow.pipelines.registry import load_generator
    from rewardflow.rewards.base import Reward

    class Brightness(Reward):
        name = "brightness"

        def score(self, media, prompts):
            return media.flatten(1).mean(1)

    gc.collect()
    base = _status_kb("VmRSS")
    gen = load_generator(a.model, guidance_scale=1.0)
    tcfg, mcfg = split_config({"method": "draft", "k": 1, "strategy": a.worker, "lora_rank": 0, "optimizer": "adamw",
                               "lr": 1e-5, "batch_size": 1, "sample_steps": 2, "max_steps": a.steps,
                               "prompts": "toy:train", "eval_prompts": "", "report_to": "none", "resume": "never",
                               "output_dir": str(Path(a.out) / f"run_{a.worker}")})
    tr = Trainer(tcfg, mcfg, generator=gen, reward=Brightness())
    gc.collect()
    setup = _status_kb("VmRSS")
    _reset_peak()
    t0 = time.time()
    for _ in range(a.steps):
        rec = tr.train_step()
        tr.step += 1
        assert not rec["skipped"], rec
    seconds = (time.time() - t0) / a.steps
    peak = _status_kb("VmHWM")
    res = {"rank": tr.accelerator.process_index, "expected": tr.memory,
           "measured": {"base_mib": base / 1024, "setup_mib": (setup - base) / 1024, "peak_mib": (peak - base) / 1024,
                        "optimizer_state_mib": tr.sharding.measured_optimizer_bytes() / MIB},
           "seconds_per_step": seconds}
    Path(a.out, f"{a.worker}_rank{res['rank']}.json").write_text(json.dumps(res))


def _table(rows: list[dict]) -> str:
    head = ("| strategy | parameters | gradients | optimizer state | fp32 master | expected total | RSS after set-up | "
            "peak RSS in training | s/step |\n|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        e, m = r["expected"], r["measured"]
        f = lambda b: f"{b / MIB:.0f} MiB"  # noqa: E731
        lines.append(f"| {e['strategy']} | {f(e['parameter_bytes'])} | {f(e['gradient_bytes'])} | "
                     f"{f(e['optimizer_state_bytes'])} | {f(e['master_weight_bytes'])} | {f(e['total_bytes'])} | "
                     f"{m['setup_mib']:.0f} MiB | {m['peak_mib']:.0f} MiB | {r['seconds_per_step']:.1f} |")
    return head + "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--strategies", nargs="+", default=["ddp", "fsdp", "zero2", "zero3"])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sharding_memory.json"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return _worker(a)
    from rewardflow.testing.tiny_flow import build_tiny_sd3

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": str(ROOT)}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "sd3"
        build_tiny_sd3(model, layers=a.layers, heads=a.heads, head_dim=a.head_dim)
        for s in a.strategies:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                   str(29800 + len(results)), __file__, "--worker", s, "--model", str(model), "--out", tmp,
                   "--steps", str(a.steps)]
            res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            if res.returncode:
                sys.exit(f"{s}: the launch failed\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
            results[s] = [json.loads(Path(tmp, f"{s}_rank{r}.json").read_text()) for r in (0, 1)]
            print(f"{s}: done", flush=True)
    rows = [results[s][0] for s in a.strategies]
    table = _table(rows)
    print(table)
    doc = {"config": {"model": "tiny SD3 (build_tiny_sd3)", "layers": a.layers, "heads": a.heads,
                      "head_dim": a.head_dim, "method": "draft (K=1), lora_rank=0, adamw", "processes": 2,
                      "device": "cpu (gloo)", "steps": a.steps, "torch_threads": 1},
           "per_process": results, "table_rank0": table}
    Path(a.out).write_text(json.dumps(doc, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
