"""Train every registered training method from the shipped base toy generator with the same sample budget and
report held-out oracle accuracy and reward before / after, samples used, wall time and peak memory.

    python benchmarks/toy_methods.py                                  # every method with a configs/toy/<name>.yaml
    python benchmarks/toy_methods.py --methods flow_dpo,rwr --samples 1920
    python benchmarks/toy_methods.py --methods draft --max-steps 40 --set lr=2e-4
    python benchmarks/toy_methods.py --methods draft --set eval_every=20 --set 'heldout_rewards=[toy_clip]' \
        --set best_metric=heldout_toy_clip                  # + the oracle at the eval the held-out reward selects

Each method runs in its own subprocess (so ``peak_rss_mb`` is that method's own peak) from ``configs/toy/<name>.yaml``
with ``max_steps`` = ceil(samples / new samples per step), unless ``--max-steps`` is given (with
``updates_per_rollout=K`` each rollout serves K steps, so a step draws 1/K of its samples). The evaluation is the trainer's
own: ``eval_per_category`` held-out prompts per caption category (default 50, i.e. 250 prompts, docs/toy-world.md#evaluation), fixed
noise, the config's ``sample_steps`` and ``guidance_scale``; ``reward_*`` is the method's training reward on them.
Writes ``benchmarks/results/toy_methods.json`` (merged with earlier entries) and ``toy_methods.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _config_for(method: str) -> Path | None:
    exact = ROOT / "configs" / "toy" / f"{method}.yaml"
    if exact.is_file():
        return exact
    hits = sorted((ROOT / "configs" / "toy").glob(f"*{method}*.yaml"))
    return hits[0] if hits else None


def _worker(a) -> int:
    """Run one method in this process and print one JSON line."""
    import torch

    torch.set_num_threads(a.threads)
    from rewardflow.align.trainer import Trainer, load_train_config

    cfg = _config_for(a.worker)
    base = [f"output_dir={a.runs}/{a.worker}", f"eval_per_category={a.eval_per_category}", "eval_at_start=true",
            "eval_every=0", "save_every=0", "report_to=none", "resume=never"]
    tcfg, mcfg = load_train_config(cfg, base + list(a.set or []))
    trainer = Trainer(tcfg, mcfg)
    eb = trainer.effective_batch()
    per_step = eb["samples_per_step"]  # new samples per step are fewer when each rollout serves several steps
    steps = a.max_steps or max(1, math.ceil(a.samples / eb["new_samples_per_step"]))
    trainer.set_max_steps(steps)
    t0 = time.time()
    s = trainer.train()
    wall = time.time() - t0
    b, f = s["before"], s["after"]
    rec = {"method": a.worker, "config": str(cfg.relative_to(ROOT)), "model": tcfg.model, "reward": tcfg.reward,
           "steps": steps, "samples": s["samples"], "samples_per_step": per_step,
           "oracle_accuracy_before": b.get("oracle_accuracy"), "oracle_accuracy_after": f.get("oracle_accuracy"),
           "reward_before": b.get("eval_reward"), "reward_after": f.get("eval_reward"),
           "per_category_before": {k[7:]: v for k, v in b.items() if k.startswith("oracle_") and k[7:] not in
                                   ("accuracy", "partial")},
           "per_category_after": {k[7:]: v for k, v in f.items() if k.startswith("oracle_") and k[7:] not in
                                  ("accuracy", "partial")},
           "skipped_steps": s["skipped_steps"], "wall_seconds": round(wall, 1),
           "train_seconds": s["seconds"], "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                                               / 1024, 1),
           "threads": a.threads, "overrides": list(a.set or []), "eval_prompts": 5 * a.eval_per_category,
           "lr": tcfg.lr, "sample_steps": tcfg.sample_steps}
    sel = (s.get("best") or {}).get("eval")
    if sel:  # --set best_metric=KEY: the evaluation the metric selected (model selection without the oracle)
        rec["selected"] = {"metric": s["best"]["metric"], "step": sel["step"], "samples": sel["samples"],
                           "oracle_accuracy": sel.get("oracle_accuracy"), "reward": sel.get("eval_reward"),
                           "early_stopped": s.get("early_stopped", False)}
    print("RESULT " + json.dumps(rec), flush=True)
    return 0


def _selected(e: dict) -> str:
    sel = e.get("selected")
    if not sel or sel.get("oracle_accuracy") is None:
        return "–"
    return f"{100 * sel['oracle_accuracy']:.1f}% (step {sel['step']}, by {sel['metric']})"


def _table(entries: dict) -> str:
    header = ("| method | model | reward | oracle acc. before | after | Δ (points) | reward before | after | samples "
              "| wall (s) | peak RSS (MB) | selected: oracle (step) |")
    rows = [header, "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m, e in sorted(entries.items()):
        if "error" in e:
            rows.append(f"| {m} | – | – | – | – | – | – | – | – | – | failed: {e['error'][:60]} | – |")
            continue
        ob, oa = e["oracle_accuracy_before"], e["oracle_accuracy_after"]
        d = "–" if ob is None or oa is None else f"{100 * (oa - ob):+.1f}"
        fmt = lambda v, s=100, p=1: "–" if v is None else f"{s * v:.{p}f}"
        model = "eps" if "eps" in str(e["model"]) else "flow"
        rows.append(f"| {m} | {model} | {e['reward']} | {fmt(ob)}% | {fmt(oa)}% | {d} | {fmt(e['reward_before'], 1, 3)} "
                    f"| {fmt(e['reward_after'], 1, 3)} | {e['samples']} | {e['wall_seconds']:.0f} | "
                    f"{e['peak_rss_mb']:.0f} | {_selected(e)} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default=None, help="comma-separated methods (default: every registered method "
                                                   "with a configs/toy/<name>.yaml)")
    p.add_argument("--samples", type=int, default=1920, help="sample budget per method (generated images)")
    p.add_argument("--max-steps", type=int, default=0, help="override the step count (ignores --samples)")
    p.add_argument("--eval-per-category", type=int, default=50)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="extra config override (repeatable)")
    p.add_argument("--tag", default="", help="store the entries as METHOD@TAG (e.g. a tuned variant)")
    p.add_argument("--runs", default=str(ROOT / "runs" / "bench"), help="run directories")
    p.add_argument("--out", default=str(RESULTS / "toy_methods.json"))
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        return _worker(a)
    from rewardflow.align.method import list_methods

    methods = a.methods.split(",") if a.methods else [m for m in list_methods() if _config_for(m) is not None]
    out = Path(a.out)
    entries = json.loads(out.read_text()) if out.is_file() else {}
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for m in methods:
        key = f"{m}@{a.tag}" if a.tag else m
        if _config_for(m) is None:
            print(f"[bench] {m}: no configs/toy/*{m}*.yaml, skipped", flush=True)
            continue
        cmd = [sys.executable, __file__, "--worker", m, "--samples", str(a.samples), "--max-steps", str(a.max_steps),
               "--eval-per-category", str(a.eval_per_category), "--threads", str(a.threads), "--runs", a.runs]
        for s in a.set or []:
            cmd += ["--set", s]
        print(f"[bench] {m}: {' '.join(cmd[1:])}", flush=True)
        proc = subprocess.run(cmd, env=env, cwd=str(ROOT), capture_output=True, text=True, check=False)
        res = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not res:
            err = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
            print(f"[bench] {m} failed: {err}", flush=True)
            entries[key] = {"error": err}
        else:
            entries[key] = json.loads(res[-1][7:])
            e = entries[key]
            print(f"[bench] {m}: oracle {e['oracle_accuracy_before']} -> {e['oracle_accuracy_after']}, reward "
                  f"{e['reward_before']} -> {e['reward_after']}, {e['samples']} samples, {e['wall_seconds']} s",
                  flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(entries, indent=1))
        out.with_suffix(".md").write_text(_table(entries) + "\n")
    print(_table(entries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
