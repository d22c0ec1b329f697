"""CPU threading of a rewardflow process, chosen once, before torch is imported (docs/usage/performance.md).

torch runs its CPU kernels on OpenMP threads (libgomp in the Linux wheels), one per core by default. A libgomp thread
that waits for the others at the end of a parallel region spins for about 300,000 iterations (milliseconds) before
it sleeps. When another process holds one of the cores, the partner thread is not running and every parallel region
stalls on that spin: a small toy demo ran about 12x slower on 2 cores with one competing process. A passive wait
policy (``OMP_WAIT_POLICY=PASSIVE``: a waiting thread sleeps at once) removes the stall.

The OpenMP runtime reads its environment once, when torch loads it, so :func:`configure` only sets environment
variables; ``rewardflow.cli.main`` calls it after parsing the command line and before any command imports torch.
Variables the user set are left alone; ``--threads N`` (or a trainer config's ``threads`` key, through
:func:`apply_threads`) wins over ``OMP_NUM_THREADS``.

This module imports nothing from rewardflow and does not import torch (the bottom layer).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

WAIT_POLICY = "PASSIVE"
# where the choice came from when torch was imported before configure() ran (the OpenMP runtime had read its settings)
TORCH_LOADED = "torch was loaded before"
# any of these set by the user means the user chose how OpenMP threads wait (libgomp reads OMP_WAIT_POLICY and
# GOMP_SPINCOUNT, which wins; Intel's OpenMP runtime KMP_BLOCKTIME)
WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
# launchers that start several processes on one machine say how many: torchrun / accelerate, Open MPI, Intel MPI /
# MPICH, Slurm; WORLD_SIZE (all machines of the run) is the fallback
LOCAL_SIZE_VARS = ("LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE",
                   "WORLD_SIZE")

_current: dict = {}


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity (taskset, a container's cpuset), capped by a cgroup v2 CPU
    quota (``docker --cpus``) when there is one."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, n)


def local_processes(env=None) -> int:
    """Processes of this run on this machine, as the launcher says (1 when started directly)."""
    env = os.environ if env is None else env
    for k in LOCAL_SIZE_VARS:
        v = str(env.get(k, "")).strip()
        if v.isdigit() and int(v) > 0:
            return int(v)
    return 1


def default_threads(env=None, cores: int | None = None) -> int:
    """The cores split over the processes of the run on this machine, at least one thread each."""
    return max(1, (available_cores() if cores is None else cores) // local_processes(env))


def check_threads(threads) -> int:
    """``threads`` as a whole number >= 1, or a ValueError naming the fix."""
    try:
        n = int(threads)
    except (TypeError, ValueError):
        n = 0
    if n < 1 or str(threads).strip() != str(n):
        raise ValueError(f"threads must be a whole number >= 1, got {threads!r} (e.g. --threads 1)")
    return n


def configure(threads: int | None = None, env=None) -> dict:
    """Choose the CPU threading of this process, set it in ``env`` (default ``os.environ``) and return the choice
    (also kept for :func:`current`).

    Intra-op threads: ``threads`` (``--threads N``) if given; else ``OMP_NUM_THREADS`` if the user set it; else
    :func:`default_threads`. Wait policy: ``OMP_WAIT_POLICY=PASSIVE`` unless the user set one of :data:`WAIT_VARS`.
    When torch is already loaded (rewardflow called from a Python process that imported it), the OpenMP runtime has
    read its environment: an explicit ``threads`` goes to ``torch.set_num_threads`` and nothing else changes.
    """
    env = os.environ if env is None else env
    torch = sys.modules.get("torch")
    cores, procs = available_cores(), local_processes(env)
    info: dict = {"cores": cores, "processes": procs}
    if threads is not None:
        n = check_threads(threads)
        info.update(threads=n, threads_from="--threads")
        env["OMP_NUM_THREADS"] = str(n)
        if torch is not None:
            torch.set_num_threads(n)
    elif torch is not None:
        info.update(threads=torch.get_num_threads(), threads_from=TORCH_LOADED)
    elif env.get("OMP_NUM_THREADS", "").strip():
        v = env["OMP_NUM_THREADS"].strip()  # libgomp also takes a list ("4,2": per nesting level)
        info.update(threads=int(v) if v.isdigit() else v, threads_from="OMP_NUM_THREADS")
    else:
        info.update(threads=default_threads(env, cores),
                    threads_from=f"{cores} core{'s' * (cores > 1)} / {procs} process{'es' * (procs > 1)}")
        env["OMP_NUM_THREADS"] = str(info["threads"])
    user_wait = next((k for k in WAIT_VARS if env.get(k, "").strip()), None)
    if user_wait is not None:
        info.update(wait=f"{user_wait}={env[user_wait].strip()}", wait_from="yours")
    elif torch is not None:
        info.update(wait="OpenMP default", wait_from=TORCH_LOADED)
    else:
        env["OMP_WAIT_POLICY"] = WAIT_POLICY
        info.update(wait=f"OMP_WAIT_POLICY={WAIT_POLICY}", wait_from="default")
    _current.clear()
    _current.update(info)
    return dict(info)


def apply_threads(threads: int | None) -> dict:
    """For a config key (the trainer's ``threads``): ``None`` or 0 keeps the current choice; a number sets the
    intra-op threads now (``torch.set_num_threads`` once torch is loaded) unless ``--threads`` was given on the
    command line, which wins. Returns :func:`current`, for the run's summary."""
    if threads not in (None, 0) and _current.get("threads_from") != "--threads":
        n = check_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(n)
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(n)
        _current.update(threads=n, threads_from="config key threads")
    return current()


def current() -> dict:
    """What this process runs with, for a run's summary: the choice of :func:`configure` (empty when it was not
    called, e.g. the library used from Python) and, once torch is loaded, torch's own intra-op thread count."""
    info = dict(_current)
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
    return info


def describe(info: dict | None = None) -> str:
    """The start-up line of a compute command."""
    i = current() if info is None else info
    if not i:
        return "[rewardflow] CPU: threading not configured (rewardflow.runtime.configure was not called)"
    return (f"[rewardflow] CPU: {i['threads']} thread(s) ({i['threads_from']}), {i['wait']} ({i['wait_from']}); "
            "--threads N / OMP_NUM_THREADS / OMP_WAIT_POLICY change them")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--threads`` and ``--print-threads`` to a command's parser, or to each sub-command of a command that has
    sub-commands (``rewardflow toy ...``); a ``--threads`` the command already has is kept."""
    for action in parser._actions:  # argparse keeps the sub-parsers only here
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                add_arguments(sub)
            return
    if "--threads" not in parser._option_string_actions:
        parser.add_argument("--threads", type=int, default=None, metavar="N",
                            help="CPU intra-op threads (default: OMP_NUM_THREADS if set, else the cores split over "
                                 "the processes of the run on this machine)")
    parser.add_argument("--print-threads", action="store_true",
                        help="print the CPU threading this command runs with, as torch sees it, and exit")


def print_threads() -> None:
    """``--print-threads``: load torch and print what it sees, one JSON object on stdout."""
    import torch  # loaded here (seconds) so that current() reads torch's own thread count

    print(json.dumps({**current(), "torch_threads": torch.get_num_threads(),
                      "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS",) + WAIT_VARS}}))
