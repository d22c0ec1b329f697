"""Wall time of two fixed CPU workloads with 0, 1 and 2 competing busy processes, under the CPU threading every
command had before rewardflow chose it (rewardflow/runtime.py) and under the command's own choice
(docs/usage/performance.md).

Workloads (the real command lines, each in a fresh process, so start-up and model loading are counted):

* ``demo``:  ``rewardflow demo per_category=2 iterations=3`` (10 held-out prompts, ReNO, the shipped toy models);
* ``train``: ``rewardflow train configs/toy/flow_dpo.yaml max_steps=10 batch_size=2 num_samples_per_prompt=4``
  with no evaluation, no intermediate checkpoint and no logger.

Competing load: N pure-Python busy loops (``while True: pass``), one core each, started half a second before the
workload and stopped after it. Settings (``--settings``; the environment the workload gets):

* ``before``: what every command ran with before: torch's one intra-op thread per core (``OMP_NUM_THREADS`` = the
  cores) and libgomp's default wait, forced with ``GOMP_SPINCOUNT=300000`` (the spin count libgomp uses when
  ``OMP_WAIT_POLICY`` is unset: GCC libgomp/env.c), which the command leaves alone as the user's choice;
* ``fix``: nothing set: the command's own choice (its ``[rewardflow] CPU:`` start-up line is recorded);
* presets used to choose the fix: ``passive1`` / ``passive2`` (``OMP_WAIT_POLICY=PASSIVE``, 1 / 2 threads),
  ``spin1`` (libgomp's default wait, 1 thread), ``spin10k2`` (``GOMP_SPINCOUNT=10000``, 2 threads).

The cases run in rounds (every case once per round, ``--repeats`` rounds) so that other work on the machine falls on
all of them alike; each case reports the median wall time, the median CPU time of the workload process (user +
system: spinning threads burn it) and the 1-minute load average before each run. The ratio of a case is its median
wall time over the same setting's idle median.

    python benchmarks/cpu_contention.py [--workloads demo,train] [--settings before,fix] [--busy 0,1,2]
        [--repeats 3] [--out benchmarks/results/cpu_contention.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rewardflow.runtime import available_cores

ROOT = Path(__file__).resolve().parents[1]
CORES = available_cores()
WORKLOADS = {
    "demo": ["demo", "per_category=2", "iterations=3", "--out", "{out}"],
    "train": ["train", "configs/toy/flow_dpo.yaml", "max_steps=10", "batch_size=2", "num_samples_per_prompt=4",
              "eval_prompts=''", "eval_at_start=false", "report_to=none", "save_every=0", "resume=never",
              "output_dir={out}"],
}
SETTINGS = {
    "before": {"OMP_NUM_THREADS": str(CORES), "GOMP_SPINCOUNT": "300000"},
    "fix": {},
    "passive1": {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"},
    "passive2": {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"},
    "spin1": {"OMP_NUM_THREADS": "1", "GOMP_SPINCOUNT": "300000"},
    "spin10k2": {"OMP_NUM_THREADS": "2", "GOMP_SPINCOUNT": "10000"},
}
# cleared from the workload's environment before a setting's variables are added
THREAD_VARS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "MKL_NUM_THREADS",
               "LOCAL_WORLD_SIZE", "WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS",
               "SLURM_NTASKS_PER_NODE")
BUSY = "while True:\n    pass\n"


def one_run(workload: str, setting: str, busy: int, timeout: float) -> dict:
    """One fresh workload process: its wall time, its CPU time (user + system), the load average before, its
    start-up line."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env.update(SETTINGS[setting], HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    load = os.getloadavg()[0]
    hogs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(busy)]
    try:
        time.sleep(0.5 if busy else 0.0)
        with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "log", "w+") as log:
            cmd = [sys.executable, "-m", "rewardflow"] + [a.format(out=f"{tmp}/out") for a in WORKLOADS[workload]]
            ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the busy loops count only once reaped
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                return {"wall_s": None, "timed_out_after_s": timeout, "load_avg_1min_before": round(load, 2)}
            wall = time.perf_counter() - t0
            ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            log.seek(0)
            text = log.read()
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{text[-3000:]}")
    line = next((x for x in text.splitlines() if x.startswith("[rewardflow] CPU:")), None)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "load_avg_1min_before": round(load, 2),
            "startup_line": line}


def _fmt(x) -> str:
    return "   n/a" if x is None else f"{x:6.1f}"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default="demo,train")
    ap.add_argument("--settings", default="before,fix", help=f"comma-separated, from {', '.join(SETTINGS)}")
    ap.add_argument("--busy", default="0,1,2", help="numbers of competing busy processes")
    ap.add_argument("--repeats", type=int, default=3, help="rounds (each case once per round; medians reported)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds before a run counts as timed out")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/cpu_contention.json"))
    a = ap.parse_args(argv)
    workloads, settings = a.workloads.split(","), a.settings.split(",")
    busy = [int(b) for b in a.busy.split(",")]
    for w in workloads:
        if w not in WORKLOADS:
            ap.error(f"unknown workload {w!r}; known: {', '.join(WORKLOADS)}")
    for s in settings:
        if s not in SETTINGS:
            ap.error(f"unknown setting {s!r}; known: {', '.join(SETTINGS)}")
    keys = [(w, s, b) for w in workloads for b in busy for s in settings]
    runs: dict = {k: [] for k in keys}
    t_start = time.time()
    for rnd in range(a.repeats):
        for w, s, b in keys:
            r = one_run(w, s, b, a.timeout)
            runs[(w, s, b)].append(r)
            print(f"round {rnd + 1}: {w:5s} {s:8s} busy={b}: {_fmt(r['wall_s'])} s  (load before "
                  f"{r['load_avg_1min_before']})", flush=True)
    cases: dict = {}
    for (w, s, b), rs in runs.items():
        walls = [r["wall_s"] for r in rs if r["wall_s"] is not None]
        cpus = [r["cpu_s"] for r in rs if r["wall_s"] is not None]
        cases[f"{w}/{s}/busy{b}"] = {
            "workload": w, "setting": s, "busy": b,
            "median_wall_s": statistics.median(walls) if len(walls) == len(rs) else None,
            "median_cpu_s": statistics.median(cpus) if cpus else None,
            "median_load_before": statistics.median(r["load_avg_1min_before"] for r in rs), "runs": rs}
    for c in cases.values():
        idle = cases[f"{c['workload']}/{c['setting']}/busy0"]["median_wall_s"] if 0 in busy else None
        c["ratio_vs_idle"] = (round(c["median_wall_s"] / idle, 2) if idle and c["median_wall_s"] is not None
                              else None)
    result = {
        "benchmark": "cpu_contention",
        "command": "python benchmarks/cpu_contention.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "workloads": {w: "rewardflow " + " ".join(WORKLOADS[w]).replace(" --out {out}", "").replace(
            " output_dir={out}", "") for w in workloads},
        "settings": {s: SETTINGS[s] or "(nothing set: the command's own choice)" for s in settings},
        "busy_process": "python -c 'while True: pass' (one core each)",
        "cores": CORES, "machine": platform.platform(), "python": platform.python_version(),
        "repeats": a.repeats, "minutes": round((time.time() - t_start) / 60, 1),
        "note": "wall time of the whole command (start-up, model loading, work, writing); cpu_s: the workload's "
                "user + system CPU time; other work on the machine competes too: compare "
                "median_load_before with the cores",
        "cases": cases,
    }
    print(f"\n{CORES} cores; median wall time in s (ratio to the same setting's idle time), "
          f"median 1-min load average before the runs in []")
    print("workload setting  " + "".join(f"{f'busy={b}':>24s}" for b in busy))
    for w in workloads:
        for s in settings:
            cells = []
            for b in busy:
                c = cases[f"{w}/{s}/busy{b}"]
                r = c["ratio_vs_idle"]
                cells.append(f"{_fmt(c['median_wall_s'])} ({'  n/a' if r is None else f'{r:5.2f}'}) "
                             f"[{c['median_load_before']:.1f}]")
            print(f"{w:8s} {s:8s}" + "".join(f"{x:>24s}" for x in cells))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
