"""Several processes on CPU (gloo): 2 processes x batch b == 1 process x batch 2b, a failing rank fails the launch,
global_batch_size, the launch-trap warning and the shipped accelerate configs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ACC_CONFIGS = ROOT / "configs" / "accelerate"
# 2 processes vs 1 process on the same data: the only differences are float summation orders (batch of b vs 2b
# through the network, the gloo mean), measured at ~1e-7..2e-6 relative; the stated tolerance is 1e-4
RTOL = 1e-4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), *args]
    return subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_two_processes_match_one_process_with_twice_the_batch(tmp_path, tiny_pipe_dir):
    """flow_dpo, grpo and draft: one train_step on 2 gloo processes with batch 2 per process gives the loss and the
    (all-reduced) gradient of one process with batch 4 on the same prompts and noise (tests/_dist_equiv.py)."""
    from tests._dist_equiv import METHODS, run_method

    methods = list(METHODS)
    res = _torchrun(["tests/_dist_equiv.py", str(tmp_path), str(tiny_pipe_dir), *methods])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for m in methods:
        single = run_method(m, tiny_pipe_dir, tmp_path / "single")
        r0, r1 = (torch.load(tmp_path / f"{m}_rank{r}.pt", weights_only=False) for r in (0, 1))
        assert single["num_processes"] == 1 and r0["num_processes"] == 2
        assert r0["in_sync"] and r1["in_sync"], f"{m}: processes started from different trainable weights"
        assert not single["skipped"] and not r0["skipped"]
        assert torch.equal(r0["grad"], r1["grad"]), f"{m}: processes hold different gradients after all-reduce"
        assert r0["loss"] == r1["loss"]  # the logged loss is the mean over processes
        g, g2 = single["grad"], r0["grad"]
        assert g.abs().max() > 0
        rel = float((g2 - g).norm() / g.norm())
        assert rel < RTOL, f"{m}: relative gradient error {rel:.2e}"
        torch.testing.assert_close(g2, g, rtol=RTOL, atol=RTOL * float(g.abs().max()))
        assert r0["loss"] == pytest.approx(single["loss"], rel=RTOL, abs=1e-8), m


def test_a_failing_rank_fails_the_whole_launch(tmp_path, tiny_pipe_dir):
    res = _torchrun(["tests/_dist_equiv.py", str(tmp_path), str(tiny_pipe_dir), "fail_on_rank1"], timeout=180)
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert "deliberate failure on rank 1" in out  # the error is shown, not swallowed
    assert "rank      : 1" in out or "local_rank: 1" in out


def test_collective_timeout_turns_a_hang_into_an_error(tmp_path, tiny_pipe_dir):
    """collective_timeout_s=6 and rank 1 stuck: rank 0's next collective fails after ~6 s (gloo: "Timed out waiting
    6000ms"), the launch exits non-zero. (Under heavy load the two processes may already drift more than 6 s apart
    while building the trainer; then the start-up broadcast times out instead, the same mechanism.)"""
    import re

    res = _torchrun(["tests/_dist_equiv.py", str(tmp_path), str(tiny_pipe_dir), "timeout"], timeout=180)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "Timed out waiting 6000ms" in out, out[-3000:]
    m = re.search(r"rank 0: collective failed after ([0-9.]+) s", out)
    assert m is None or 5.5 <= float(m.group(1)) < 60, out[-3000:]


def test_global_batch_size_sets_the_per_process_batch(tmp_path, tiny_pipe_dir):
    from rewardflow.align.trainer import per_process_batch_size, split_config
    from tests.trainer_utils import make_trainer

    assert per_process_batch_size(16, 2, 2) == 4 and per_process_batch_size(8, 8, 1) == 1
    with pytest.raises(ValueError, match="not divisible by num_processes x grad_accum = 4 x 1 = 4"):
        per_process_batch_size(10, 4, 1)
    with pytest.raises(ValueError, match="global_batch_size must be >= 0"):
        split_config({"method": "rwr", "global_batch_size": -1})
    with pytest.raises(ValueError, match="collective_timeout_s"):
        split_config({"method": "rwr", "collective_timeout_s": 0})
    tr = make_trainer(tmp_path, tiny_pipe_dir, "rwr", global_batch_size=6, grad_accum=3, batch_size=99,
                      num_samples_per_prompt=2)
    e = tr.effective_batch()
    assert e["batch_size"] == 2 and e["prompts_per_step"] == 6 and e["num_processes"] == 1
    assert "global_batch_size=6: batch_size = 6 / (1 processes x 3 grad_accum) = 2" in tr.describe()
    assert tr.ctx.batch_size == 2
    with pytest.raises(ValueError, match="not divisible"):
        make_trainer(tmp_path, tiny_pipe_dir, "rwr", global_batch_size=5, grad_accum=2)


def test_one_process_when_several_were_asked_for_warns(monkeypatch):
    """`accelerate launch --cpu --num_processes 2` starts one process with MASTER_ADDR set and no WORLD_SIZE."""
    from rewardflow.align.trainer import TrainConfig, make_accelerator

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    with pytest.warns(UserWarning, match="only this one process started"):
        acc = make_accelerator(TrainConfig(method="rwr", device="cpu"))
    assert acc.num_processes == 1


def test_run_directory_records_num_processes(tmp_path, tiny_pipe_dir):
    import json

    from tests.trainer_utils import make_trainer

    make_trainer(tmp_path, tiny_pipe_dir, "draft", max_steps=1).train()
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["num_processes"] == 1 and s["effective_batch"]["prompts_per_step"] == 2
    head = (tmp_path / "config.yaml").read_text().splitlines()[0]
    assert head.startswith("# launched with num_processes=1") and "= 2 prompts per optimizer step" in head
    from rewardflow.align.trainer import load_train_config

    load_train_config(tmp_path / "config.yaml")  # the resolved config (with its comment) is still a valid config


EXPECTED_CONFIGS = {"single_gpu": ("NO", 1), "ddp_8gpu": ("MULTI_GPU", 8), "multinode_2x8": ("MULTI_GPU", 16),
                    "cpu_2proc": ("MULTI_GPU", 2), "fsdp_lora": ("FSDP", 8), "fsdp_full": ("FSDP", 8),
                    "deepspeed_zero2": ("DEEPSPEED", 8), "deepspeed_zero3": ("DEEPSPEED", 8)}


@pytest.mark.parametrize("name", sorted(EXPECTED_CONFIGS))
def test_accelerate_configs_load(name):
    """Syntax only (no GPU here): accelerate's own loader accepts each file (it rejects unknown keys) and the keys a
    launch needs are set."""
    import yaml
    from accelerate.commands.config.config_args import load_config_from_file

    path = ACC_CONFIGS / f"{name}.yaml"
    raw = yaml.safe_load(path.read_text())
    for key in ("compute_environment", "distributed_type", "num_processes", "num_machines", "machine_rank",
                "mixed_precision", "use_cpu"):
        assert key in raw, f"{path}: missing {key}"
    cfg = load_config_from_file(str(path))
    dtype, nproc = EXPECTED_CONFIGS[name]
    assert str(cfg.distributed_type).split(".")[-1] == dtype and cfg.num_processes == nproc
    assert cfg.num_processes % cfg.num_machines == 0
    if dtype == "FSDP":
        assert cfg.fsdp_config["fsdp_sharding_strategy"] == "FULL_SHARD" and cfg.fsdp_config["fsdp_use_orig_params"]
    if dtype == "DEEPSPEED":
        assert cfg.deepspeed_config["zero_stage"] == int(name[-1])
    if cfg.num_machines > 1:
        assert cfg.main_process_ip and cfg.main_process_port
    if name == "cpu_2proc":  # accelerate starts N processes only through its multi-GPU launcher (use_cpu: one)
        assert not cfg.use_cpu and cfg.mixed_precision == "no"


def test_benchmark_shell_scripts_parse():
    for script in ("benchmarks/cuda_smoke.sh", "benchmarks/cpu_multiprocess_smoke.sh"):
        res = subprocess.run(["bash", "-n", str(ROOT / script)], check=False, capture_output=True, text=True)
        assert res.returncode == 0, f"{script}: {res.stderr}"
    # the shared method table: every method has a toy config and its own 2-step overrides
    res = subprocess.run(["bash", "-c", 'source benchmarks/_smoke_methods.sh; for m in $SMOKE_METHODS; do '
                          'echo "$m ${EXTRA[$m]:-MISSING}"; done'], cwd=ROOT, check=True, capture_output=True,
                         text=True)
    rows = [ln.split(" ", 1) for ln in res.stdout.strip().splitlines()]
    assert len(rows) == 10 and all("MISSING" not in extra for _, extra in rows)
    assert all((ROOT / "configs" / "toy" / f"{m}.yaml").is_file() for m, _ in rows)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_cli_runs_grpo_on_two_processes(tmp_path, launcher):
    """The real command line, both launchers (~25 s each on 2 cores)."""
    import json

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    port = str(_free_port())
    launch = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
              if launcher == "torchrun" else
              [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACC_CONFIGS / "cpu_2proc.yaml"),
               "--main_process_port", port])
    cmd = [*launch, "-m", "rewardflow", "train", "configs/toy/grpo.yaml", "max_steps=2", "batch_size=2",
           "group_size=2", "rollout_steps=2", "sample_steps=2", "eval_at_start=false", "eval_prompts=''",
           "report_to=none", "save_every=0", f"output_dir={tmp_path}"]
    res = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["num_processes"] == 2 and s["effective_batch"]["samples_per_step"] == 8 and s["samples"] == 16
    assert "2 prompts/process x 1 grad_accum x 2 processes = 4 prompts" in res.stdout


def test_offline_dpo_pairs_are_split_over_processes(tmp_path, flow_gen):
    """Offline pairs have no prompt sampling: process r of P takes its own slice of the shared pair stream, so two
    processes with n pairs each read the 2n pairs one process with 2n pairs would read, each once."""
    import json

    from safetensors.torch import save_file

    from rewardflow.align.methods.dpo import DPOConfig, FlowDPO
    from rewardflow.align.method import MethodContext

    rows = []
    for i in range(10):
        save_file({"latent": torch.full(flow_gen.latent_shape, float(i))}, str(tmp_path / f"w{i}.safetensors"))
        save_file({"latent": torch.full(flow_gen.latent_shape, -float(i))}, str(tmp_path / f"l{i}.safetensors"))
        rows.append({"prompt": f"p{i}", "chosen": f"w{i}.safetensors", "rejected": f"l{i}.safetensors"})
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    cfg = DPOConfig(pairs="offline", dataset=str(tmp_path / "pairs.jsonl"))

    def method(rank, world):
        return FlowDPO(cfg, MethodContext(generator=flow_gen, reward=None, process_index=rank, num_processes=world))

    single, r0, r1 = method(0, 1), method(0, 2), method(1, 2)
    for step in range(3):  # 3 steps x 4 pairs: crosses the epoch boundary of the 10 pairs
        (a,) = single.collect([""] * 4, step)
        (b0,) = r0.collect([""] * 2, step)
        (b1,) = r1.collect([""] * 2, step)
        assert b0["prompts"] + b1["prompts"] == a["prompts"]
        assert torch.equal(torch.cat([b0["x0_w"], b1["x0_w"]]), a["x0_w"])
    assert single.cursor == r0.cursor == r1.cursor == 12  # every process holds the global cursor (resume-exact)


def test_two_process_resume_continues_every_process_exactly(tmp_path, tiny_pipe_dir):
    """Each process saves its own RNG states and method state (here GRPO's rollout cache, updates_per_rollout=2):
    2 processes resumed from step 1 log the same step-2 and step-3 losses (means over both processes) and end on
    the same weights as the uninterrupted 2-process run."""
    import json

    from safetensors.torch import load_file

    from tests.trainer_utils import write_train_yaml

    kw = {"max_steps": 3, "save_every": 1, "keep_checkpoints": 3, "group_size": 2, "rollout_steps": 2,
          "updates_per_rollout": 2, "lr": 1e-2, "resume": "never"}
    full, part = tmp_path / "full", tmp_path / "part"
    for out, extra in ((full, {}), (part, {"resume": str(full / "checkpoints" / "step_0000001")})):
        cfg = write_train_yaml(tmp_path / f"{out.name}.yaml", "grpo", tiny_pipe_dir, out, **{**kw, **extra})
        res = _torchrun(["-m", "rewardflow", "train", str(cfg)])
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "resumed from" in res.stdout and "reseed" not in res.stdout
    rows = {d: {r["step"]: r for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())}
            for d in (full, part)}
    assert sorted(rows[part]) == [2, 3]
    for step in (2, 3):
        assert rows[part][step]["loss"] == pytest.approx(rows[full][step]["loss"], rel=1e-6, abs=1e-9), step
    a = load_file(str(full / "checkpoints" / "step_0000003" / "trainable.safetensors"))
    b = load_file(str(part / "checkpoints" / "step_0000003" / "trainable.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-7) for k in a)
    st = torch.load(full / "checkpoints" / "step_0000001" / "state.pt", weights_only=True)
    assert len(st["per_process"]) == 2
    assert not torch.equal(st["per_process"][0]["rng"]["gen_sample"], st["per_process"][1]["rng"]["gen_sample"])


def test_early_stop_is_taken_by_every_process(tmp_path, tiny_pipe_dir):
    """Process 0 evaluates and decides; the decision is broadcast, so process 1 stops at the same step instead of
    waiting in the next gradient all-reduce (which would fail after collective_timeout_s). ``best_metric=step``
    with ``best_mode=min`` makes the stop deterministic: every evaluation after step 0 is worse."""
    import json

    from tests.trainer_utils import write_train_yaml

    cfg = write_train_yaml(tmp_path / "c.yaml", "draft", tiny_pipe_dir, tmp_path / "run", max_steps=6,
                           eval_prompts="toy:heldout", eval_per_category=1, eval_at_start=True, eval_every=2,
                           best_metric="step", best_mode="min", early_stop_patience=1, collective_timeout_s=60,
                           resume="never")
    res = _torchrun(["-m", "rewardflow", "train", str(cfg)])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["early_stopped"] and s["steps"] == 2 and s["num_processes"] == 2
    assert s["best"]["step"] == 0 and (tmp_path / "run" / "best" / "best.json").is_file()
    assert "early stop at step 2" in res.stdout


def test_a_failed_checkpoint_write_stops_every_process(tmp_path, tiny_pipe_dir):
    """Process 0 writes the checkpoints. When its disk is full at step 2, it broadcasts the failure, so process 1
    exits with the same message at once instead of waiting in the next all-reduce until collective_timeout_s
    (600 s here, longer than the test's own timeout: a hang fails the test)."""
    import time

    from tests.trainer_utils import write_train_yaml

    cfg = write_train_yaml(tmp_path / "c.yaml", "draft", tiny_pipe_dir, tmp_path / "run", max_steps=4,
                           save_every=1, collective_timeout_s=600, resume="never")
    t0 = time.time()
    res = _torchrun(["tests/_disk_full_rank0.py", str(cfg)], timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode != 0 and time.time() - t0 < 300
    assert "No space left on device" in out and "process 0 failed to write the checkpoint" in out, out[-3000:]
    ck = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["step_0000001"]  # no partial step 2
