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


TICK = os.sysconf("SC_CLK_TCK")


def _machine_busy_s() -> float:
    """CPU seconds all processes of the machine have used since boot (/proc/stat: all but idle and iowait)."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(v) - v[3] - v[4]) / TICK


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def others_cores(seconds: float = 3.0) -> float:
    """Cores the rest of the machine (other users, other agents) keeps busy, averaged over ``seconds``."""
    b0, t0 = _machine_busy_s(), time.perf_counter()
    time.sleep(seconds)
    return (_machine_busy_s() - b0) / (time.perf_counter() - t0)


def wait_for_quiet(max_others: float, max_wait: float) -> float:
    """Wait until the rest of the machine keeps fewer than ``max_others`` cores busy (at most ``max_wait`` s);
    returns the last reading."""
    t_end = time.time() + max_wait
    while (o := others_cores()) >= max_others and time.time() < t_end:
        time.sleep(7.0)
    return o


def one_run(workload: str, setting: str, busy: int, timeout: float) -> dict:
    """One fresh workload process: its wall time, its CPU time (user + system), the cores the rest of the machine
    kept busy meanwhile (all CPU time used on the machine during the run, less the workload's and the busy loops'),
    the load average before, its start-up line."""
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
            hog0 = sum(_process_cpu_s(h.pid) for h in hogs)
            m0, t0 = _machine_busy_s(), time.perf_counter()
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                return {"wall_s": None, "timed_out_after_s": timeout, "load_avg_1min_before": round(load, 2)}
            wall = time.perf_counter() - t0
            machine = _machine_busy_s() - m0
            hog_cpu = sum(_process_cpu_s(h.pid) for h in hogs) - hog0
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
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "others_cores": round(max(0.0, machine - cpu - hog_cpu) / wall, 2),
            "load_avg_1min_before": round(load, 2), "startup_line": line}


def _fmt(x) -> str:
    return "   n/a" if x is None else f"{x:6.1f}"


def summarize(runs: dict, busy: list[int]) -> dict:
    """Per case: median wall and CPU time, the median cores the rest of the machine used, the ratio of the median
    wall time to the same setting's idle median. A run that timed out counts as its timeout: when the median falls
    on one, ``median_wall_s`` is that timeout and ``at_least`` is true (the ratio is then a lower bound)."""
    cases: dict = {}
    for (w, s, b), rs in runs.items():
        done = [r for r in rs if r["wall_s"] is not None]
        # (seconds, timed out); a timed-out run sorts above every finished one (none ran longer than the timeout)
        walls = sorted((r["wall_s"], False) if r["wall_s"] is not None else (r["timed_out_after_s"], True)
                       for r in rs)
        mid = walls[(len(walls) - 1) // 2: len(walls) // 2 + 1]
        med = {k: statistics.median(r[k] for r in done) if done else None for k in ("cpu_s", "others_cores")}
        cases[f"{w}/{s}/busy{b}"] = {
            "workload": w, "setting": s, "busy": b, "runs_done": len(done), "runs_timed_out": len(rs) - len(done),
            "median_wall_s": round(statistics.median(x for x, _ in walls), 2), "at_least": any(t for _, t in mid),
            "median_cpu_s": med["cpu_s"], "median_others_cores": med["others_cores"], "runs": rs}
    for c in cases.values():
        idle = cases.get(f"{c['workload']}/{c['setting']}/busy0", {})
        ok = idle and not idle["at_least"]
        c["ratio_vs_idle"] = round(c["median_wall_s"] / idle["median_wall_s"], 2) if ok else None
    return cases


def table(cases: dict, workloads: list[str], settings: list[str], busy: list[int]) -> str:
    lines = [(f"{CORES} cores; median wall time in s (ratio to the same setting's idle time) "
              "[median cores the rest of the machine kept busy meanwhile]; >: the median run timed out"),
             "workload setting  " + "".join(f"{f'busy={b}':>26s}" for b in busy)]
    for w in workloads:
        for s in settings:
            cells = []
            for b in busy:
                c = cases[f"{w}/{s}/busy{b}"]
                r, o, ge = c["ratio_vs_idle"], c["median_others_cores"], ">" if c["at_least"] else ""
                cells.append(f"{ge}{_fmt(c['median_wall_s'])} ({'  n/a' if r is None else f'{ge}{r:.2f}'}) "
                             f"[{'n/a' if o is None else f'{o:.2f}'}]")
            lines.append(f"{w:8s} {s:8s}" + "".join(f"{x:>26s}" for x in cells))
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default="demo,train")
    ap.add_argument("--settings", default="before,fix", help=f"comma-separated, from {', '.join(SETTINGS)}")
    ap.add_argument("--busy", default="0,1,2", help="numbers of competing busy processes")
    ap.add_argument("--repeats", type=int, default=3, help="rounds (each case once per round; medians reported)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds before a run counts as timed out")
    ap.add_argument("--quiet", type=float, default=None, metavar="CORES",
                    help="before each run, wait until the rest of the machine keeps fewer than CORES cores busy")
    ap.add_argument("--max-wait", type=float, default=300.0, help="seconds --quiet waits at most before each run")
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
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    result: dict = {}
    for rnd in range(a.repeats):
        for w, s, b in keys:
            quiet = None if a.quiet is None else round(wait_for_quiet(a.quiet, a.max_wait), 2)
            r = one_run(w, s, b, a.timeout)
            r["others_cores_before"] = quiet
            runs[(w, s, b)].append(r)
            print(f"round {rnd + 1}: {w:5s} {s:8s} busy={b}: {_fmt(r['wall_s'])} s  cpu {r.get('cpu_s')} s  "
                  f"(others: {r.get('others_cores')} cores during, {quiet} before)", flush=True)
        result = {
            "benchmark": "cpu_contention",
            "command": "python benchmarks/cpu_contention.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "workloads": {w: "rewardflow " + " ".join(WORKLOADS[w]).replace(" --out {out}", "").replace(
                " output_dir={out}", "") for w in workloads},
            "settings": {s: SETTINGS[s] or "(nothing set: the command's own choice)" for s in settings},
            "busy_process": "python -c 'while True: pass' (one core each)",
            "cores": CORES, "machine": platform.platform(), "python": platform.python_version(),
            "rounds_done": rnd + 1, "minutes": round((time.time() - t_start) / 60, 1),
            "note": "wall_s: the whole command (start-up, model loading, work, writing); cpu_s: the workload's user "
                    "+ system CPU time; others_cores: cores the rest of the machine (other users) kept busy during "
                    "the run (all CPU time used on the machine less the workload's and the busy loops')",
            "cases": summarize(runs, busy),
        }
        out.write_text(json.dumps(result, indent=1) + "\n")  # after every round: an interrupted run keeps its data
    print("\n" + table(result["cases"], workloads, settings, busy))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
