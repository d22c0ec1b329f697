"""CPU threading chosen by the command line (rewardflow/runtime.py): a passive OpenMP wait and an intra-op thread
count unless the user set them, ``--threads N``, the cores split over the processes of a multi-process run, and the
OpenMP runtime of the real process seeing it (``OMP_DISPLAY_ENV=verbose``: libgomp prints what it read)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rewardflow import runtime
from rewardflow.cli import main

ROOT = Path(__file__).resolve().parents[1]
THREAD_VARS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "MKL_NUM_THREADS",
               "LOCAL_WORLD_SIZE", "WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS",
               "SLURM_NTASKS_PER_NODE")


@pytest.fixture(autouse=True)
def _fresh_choice():
    """Each test starts and ends with no recorded choice (the module keeps the process's choice)."""
    runtime._current.clear()
    yield
    runtime._current.clear()


def _run(args, cpus=None, **env_vars):
    """``python -m rewardflow ARGS`` with none of the threading variables but ``env_vars``, optionally pinned to
    ``cpus``; returns (the --print-threads JSON, libgomp's display of its settings, the start-up line)."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env.update(env_vars, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_DISPLAY_ENV="verbose")
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    res = subprocess.run([sys.executable, "-m", "rewardflow", *args], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120, preexec_fn=pin, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    seen = json.loads(res.stdout.strip().splitlines()[-1])
    omp = dict(re.findall(r"^\s+(\w+) = '([^']*)'", res.stderr, flags=re.MULTILINE))
    line = next(x for x in res.stderr.splitlines() if x.startswith("[rewardflow] CPU:"))
    return seen, omp, line


def test_cli_sets_passive_wait_and_threads_when_the_user_has_not():
    cores = len(os.sched_getaffinity(0))
    seen, omp, line = _run(["demo", "--print-threads"])
    assert seen["torch_threads"] == seen["threads"] == cores and seen["threads_from"].startswith(f"{cores} core")
    assert omp["OMP_WAIT_POLICY"] == "PASSIVE" and omp["GOMP_SPINCOUNT"] == "0"  # libgomp: sleep at once
    assert omp["OMP_NUM_THREADS"] == str(cores)
    assert line.startswith(f"[rewardflow] CPU: {cores} thread(s)") and "OMP_WAIT_POLICY=PASSIVE (default)" in line


def test_cli_leaves_the_users_variables_alone():
    seen, omp, line = _run(["train", "--print-threads"], OMP_NUM_THREADS="1", OMP_WAIT_POLICY="active")
    assert seen["torch_threads"] == 1 and seen["threads_from"] == "OMP_NUM_THREADS"
    assert omp["OMP_WAIT_POLICY"] == "ACTIVE" and omp["GOMP_SPINCOUNT"] == "30000000000"  # libgomp's active spin
    assert "OMP_WAIT_POLICY=active (yours)" in line
    # GOMP_SPINCOUNT alone is a wait choice too (the benchmark forces the old default with it)
    seen, omp, _ = _run(["score", "--reward", "clip", "--images", "x", "--prompt", "y", "--print-threads"],
                        GOMP_SPINCOUNT="300000")
    assert "OMP_WAIT_POLICY" not in seen["env"] or seen["env"]["OMP_WAIT_POLICY"] is None
    assert omp["GOMP_SPINCOUNT"] == "300000" and seen["wait"] == "GOMP_SPINCOUNT=300000"


def test_threads_flag_wins_and_multi_process_runs_split_the_cores():
    seen, omp, line = _run(["toy", "eval", "--threads", "1", "--print-threads"], OMP_NUM_THREADS="3")
    assert seen["torch_threads"] == 1 and omp["OMP_NUM_THREADS"] == "1" and "(--threads)" in line
    assert omp["OMP_WAIT_POLICY"] == "PASSIVE"
    # train takes its flags after the config too (among the key=value overrides), --threads included
    seen, omp, line = _run(["train", "configs/toy/draft.yaml", "max_steps=1", "--threads", "1", "--print-threads"],
                           OMP_NUM_THREADS="3")
    assert seen["torch_threads"] == 1 and omp["OMP_NUM_THREADS"] == "1" and "(--threads)" in line
    # torchrun with 2 processes on this machine (of 4 in all), pinned to at most 2 cores: each process gets
    # cores // 2 threads, at least 1
    cpus = sorted(os.sched_getaffinity(0))[:2]
    n = len(cpus)
    seen, _, line = _run(["sample", "--model", "toy", "--prompt", "x", "--out", "o", "--print-threads"], cpus=cpus,
                         LOCAL_WORLD_SIZE="2", WORLD_SIZE="4")
    assert seen["cores"] == n and seen["processes"] == 2 and seen["torch_threads"] == max(1, n // 2)
    assert f"{n} core{'s' * (n > 1)} / 2 processes" in line


def test_building_the_parser_loads_no_torch():
    """The OpenMP runtime reads its settings when torch loads it: no command may load torch at registration."""
    code = ("import sys; from rewardflow.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr[-2000:]


def test_configure_on_an_environment(monkeypatch):
    cores = runtime.available_cores()
    # torch is loaded in this process: the wait policy is left as it is and the thread count is torch's
    env = {}
    info = runtime.configure(env=env)
    assert env == {} and info["wait_from"] == info["threads_from"] == "torch was loaded before"
    monkeypatch.delitem(sys.modules, "torch")  # as in a fresh `rewardflow` process, before a command loads torch
    env = {}
    info = runtime.configure(env=env)
    assert env == {"OMP_NUM_THREADS": str(cores), "OMP_WAIT_POLICY": "PASSIVE"} and info["threads"] == cores
    env = {"OMP_NUM_THREADS": "3", "KMP_BLOCKTIME": "0"}
    info = runtime.configure(env=env)
    assert env == {"OMP_NUM_THREADS": "3", "KMP_BLOCKTIME": "0"} and info["threads"] == 3
    assert info["wait"] == "KMP_BLOCKTIME=0" and info["wait_from"] == "yours"
    env = {"OMP_NUM_THREADS": "3", "LOCAL_WORLD_SIZE": "2"}
    assert runtime.configure(threads=5, env=env)["threads"] == 5 and env["OMP_NUM_THREADS"] == "5"
    for k, v, want in (("LOCAL_WORLD_SIZE", "4", 4), ("WORLD_SIZE", "3", 3), ("SLURM_NTASKS_PER_NODE", "2(x3)", 1),
                       ("OMPI_COMM_WORLD_LOCAL_SIZE", "0", 1), ("MPI_LOCALNRANKS", "2", 2)):
        assert runtime.local_processes({k: v}) == want
    assert runtime.local_processes({"LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "8"}) == 2  # this machine's share
    assert runtime.default_threads({"LOCAL_WORLD_SIZE": "3"}, cores=8) == 2
    assert runtime.default_threads({"LOCAL_WORLD_SIZE": "16"}, cores=8) == 1
    for bad in (0, -1, "two", 1.5):
        with pytest.raises(ValueError, match="threads must be a whole number >= 1"):
            runtime.check_threads(bad)


def test_threads_flag_errors_are_one_line(capsys):
    assert main(["demo", "--threads", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["rewardflow: error: threads must be a whole number >= 1, got 0 (e.g. --threads 1)"]
    assert main(["train", "configs/toy/draft.yaml", "max_steps=1", "--threads"]) == 2
    assert capsys.readouterr().err.strip() == "rewardflow: error: --threads needs a number, e.g. --threads 1"
    assert main(["train", "configs/toy/draft.yaml", "--threads=x"]) == 2
    assert "threads must be a whole number >= 1, got 'x'" in capsys.readouterr().err


@pytest.fixture
def restore_threads():
    """Torch's thread count and OMP_NUM_THREADS as they were, after a test that changes them in this process."""
    before, saved = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    yield before
    torch.set_num_threads(before)
    if saved is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = saved


def test_apply_threads_config_key_and_the_flag_winning(restore_threads):
    before = restore_threads
    runtime.configure()
    assert runtime.apply_threads(None)["torch_threads"] == before  # no key: the current choice stays
    assert runtime.apply_threads(0)["torch_threads"] == before
    info = runtime.apply_threads(2)
    assert torch.get_num_threads() == 2 and info["threads"] == 2 and info["threads_from"] == "config key threads"
    runtime.configure(threads=1)
    assert runtime.apply_threads(2)["torch_threads"] == 1 and torch.get_num_threads() == 1  # --threads wins
    with pytest.raises(ValueError, match="whole number"):
        runtime.configure()
        runtime.apply_threads(-1)


def test_trainer_threads_key_sets_torch_threads_and_is_recorded(tmp_path, tiny_pipe_dir, capsys, restore_threads):
    """``threads: 2`` in a trainer config sets torch's intra-op threads when the trainer starts, prints the CPU line,
    and the run's summary.json records the choice; ``threads: -1`` is refused before any model loads."""
    from rewardflow.align.trainer import split_config
    from tests.trainer_utils import make_trainer

    runtime.configure()
    tr = make_trainer(tmp_path / "run", tiny_pipe_dir, "draft", threads=2, max_steps=1)
    assert torch.get_num_threads() == 2
    assert "[rewardflow] CPU: 2 thread(s) (config key threads)" in capsys.readouterr().out
    summary = tr.train()
    assert summary["cpu"]["threads"] == 2 and summary["cpu"]["threads_from"] == "config key threads"
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["cpu"]["torch_threads"] == 2
    with pytest.raises(ValueError, match="threads"):
        split_config({"method": "draft", "threads": -1})


def test_start_up_line_is_on_stderr_once_and_absent_under_quiet(tmp_path):
    """A compute command prints its CPU line once, on stderr (stdout stays the command's output); ``-q`` hides it
    with the progress bars. The wait policy is still set under -q (libgomp's own display says so)."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_DISPLAY_ENV="true")
    base = [sys.executable, "-m", "rewardflow", "sample", "--model", "toy", "--prompt", "a red circle", "--steps", "1"]
    loud = subprocess.run([*base, "--out", str(tmp_path / "a")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    quiet = subprocess.run([*base, "--out", str(tmp_path / "b"), "-q"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=120, check=True)
    assert [x for x in loud.stderr.splitlines() if x.startswith("[rewardflow] CPU:")] != []
    assert sum(x.startswith("[rewardflow] CPU:") for x in loud.stderr.splitlines()) == 1
    assert "[rewardflow] CPU:" not in loud.stdout and "[rewardflow] CPU:" not in quiet.stderr + quiet.stdout
    assert "OMP_WAIT_POLICY = 'PASSIVE'" in quiet.stderr
