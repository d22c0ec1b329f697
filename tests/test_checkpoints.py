"""Crash-safe checkpoints: the manifest, skipping corrupt / truncated checkpoints, exact resume of method state, and
(slow) a training run killed with SIGKILL at random points that still ends exactly where an uninterrupted run does.
Disk-full on checkpoint is in tests/test_bad_inputs.py."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rewardflow.align.trainer import MANIFEST, find_latest_checkpoint, verify_checkpoint
from tests.trainer_utils import make_trainer, read_metrics, write_train_yaml

ROOT = Path(__file__).resolve().parents[1]


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt / "trainable.safetensors"))


def test_manifest_lists_every_file_with_size_and_sha256(tmp_path, tiny_pipe_dir):
    import hashlib

    make_trainer(tmp_path, tiny_pipe_dir, "rwr", max_steps=2, save_every=1).train()
    ck = tmp_path / "checkpoints" / "step_0000002"
    man = json.loads((ck / MANIFEST).read_text())["files"]
    # the resume files, and the LoRA as plain diffusers loads it (pipe.load_lora_weights(ck))
    assert set(man) == {"trainable.safetensors", "state.pt", "trainer.json", "pytorch_lora_weights.safetensors"}
    for name, info in man.items():
        data = (ck / name).read_bytes()
        assert info == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert verify_checkpoint(ck) is None
    assert not list((tmp_path / "checkpoints").glob(".tmp_*")) and not list((tmp_path / "checkpoints").glob(".old_*"))


def test_truncated_or_corrupt_checkpoint_is_skipped_and_resume_is_still_exact(tmp_path, tiny_pipe_dir):
    kw = {"max_steps": 3, "save_every": 1, "keep_checkpoints": 3, "ema_decay": 0.9, "lr_warmup_steps": 2}
    full = tmp_path / "full"
    make_trainer(full, tiny_pipe_dir, "rwr", **kw).train()
    part = tmp_path / "part"
    make_trainer(part, tiny_pipe_dir, "rwr", **kw).train()
    ck = part / "checkpoints"
    # step 3: a file cut short (a torn write); step 2: same size, flipped bytes (silent corruption)
    f3 = ck / "step_0000003" / "state.pt"
    f3.write_bytes(f3.read_bytes()[:100])
    f2 = ck / "step_0000002" / "trainable.safetensors"
    b = bytearray(f2.read_bytes())
    b[-8:] = bytes(x ^ 0xFF for x in b[-8:])
    f2.write_bytes(bytes(b))
    (ck / ".tmp_step_0000004").mkdir()  # an interrupted write: never a candidate
    (ck / ".tmp_step_0000004" / "trainer.json").write_text("{}")
    assert "truncated" in verify_checkpoint(ck / "step_0000003")
    assert "sha256" in verify_checkpoint(ck / "step_0000002")
    with pytest.warns(RuntimeWarning) as rec:
        assert find_latest_checkpoint(ck) == ck / "step_0000001"
    msgs = [str(w.message) for w in rec]
    assert any("step_0000003" in m and "truncated" in m for m in msgs)
    assert any("step_0000002" in m and "corrupt" in m for m in msgs)
    # a killed run also leaves records of steps it never checkpointed and a torn last line in metrics.jsonl
    with open(part / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 4, "loss": 0.1')
    tr = make_trainer(part, tiny_pipe_dir, "rwr", resume="auto", **kw)
    with pytest.warns(RuntimeWarning, match="skipping checkpoint"):
        tr.train()
    assert [r["step"] for r in read_metrics(part)] == [1, 2, 3]  # steps 2-3 redone, old records replaced
    a, b = read_metrics(full), read_metrics(part)
    for ra, rb in zip(a, b):
        assert {k: v for k, v in ra.items() if k != "seconds"} == pytest.approx(
            {k: v for k, v in rb.items() if k != "seconds"}, rel=1e-6, abs=1e-7)
    wa, wb = _weights(full / "checkpoints" / "step_0000003"), _weights(ck / "step_0000003")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-7) for k in wa)
    assert verify_checkpoint(ck / "step_0000003") is None  # rewritten intact


def test_explicit_resume_path_to_a_corrupt_checkpoint_fails_clearly(tmp_path, tiny_pipe_dir):
    make_trainer(tmp_path, tiny_pipe_dir, "rwr", max_steps=1).train()
    ck = tmp_path / "checkpoints" / "step_0000001"
    (ck / "trainable.safetensors").write_bytes(b"x")
    tr = make_trainer(tmp_path, tiny_pipe_dir, "rwr", max_steps=2, resume=str(ck))
    with pytest.raises(ValueError, match=r"step_0000001 is corrupt: trainable.safetensors has 1 bytes.*resume=auto"):
        tr.train()


def test_rollout_cache_survives_resume(tmp_path, tiny_pipe_dir):
    """GRPO re-serves each rollout for two optimizer steps (RolloutReuse): a checkpoint between the two updates
    must restore the cached rollout and must not count it as new samples."""
    kw = {"max_steps": 3, "group_size": 2, "updates_per_rollout": 2, "ema_decay": 0.5}
    full = tmp_path / "full"
    make_trainer(full, tiny_pipe_dir, "grpo", **kw).train()
    part = tmp_path / "part"
    make_trainer(part, tiny_pipe_dir, "grpo", **{**kw, "max_steps": 1}).train()  # stops mid-reuse
    make_trainer(part, tiny_pipe_dir, "grpo", resume="auto", **kw).train()
    a, b = read_metrics(full), read_metrics(part)
    assert [r["samples"] for r in a] == [r["samples"] for r in b] == [4, 4, 8]
    assert b[-1]["loss"] == pytest.approx(a[-1]["loss"], rel=1e-6, abs=1e-9)
    wa, wb = _weights(full / "checkpoints" / "step_0000003"), _weights(part / "checkpoints" / "step_0000003")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-7) for k in wa)


# ------------------------------------------------------------------------------------------ kill -9 (slow)

FAULT_OVERRIDES = dict(lr=1.0e-3, lr_warmup_steps=3, ema_decay=0.9, save_every=1, keep_checkpoints=2, group_size=4,
                       updates_per_rollout=2)


def _launch(cfg: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "rewardflow", "train", str(cfg)], cwd=str(ROOT), env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _max_logged_step(run: Path) -> int:
    f = run / "metrics.jsonl"
    best = 0
    if f.is_file():
        for ln in f.read_text().splitlines():
            try:
                best = max(best, int(json.loads(ln)["step"]))
            except (ValueError, KeyError, TypeError):
                pass  # a torn line being written
    return best


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_matches_an_uninterrupted_run(tmp_path, tiny_pipe_dir):
    steps, rng = 12, random.Random(9)
    runs = {}
    for name in ("ref", "faulty"):
        runs[name] = tmp_path / name
        write_train_yaml(tmp_path / f"{name}.yaml", "grpo", tiny_pipe_dir, runs[name], max_steps=steps,
                         **FAULT_OVERRIDES)
    ref = _launch(tmp_path / "ref.yaml", tmp_path / "ref.log")
    assert ref.wait(timeout=600) == 0, (tmp_path / "ref.log").read_text()[-3000:]

    run, ck = runs["faulty"], runs["faulty"] / "checkpoints"
    kills, known_bad, corrupt = 0, set(), None
    for attempt in range(3):
        expect = find_latest_checkpoint(ck, warn=False)  # what resume=auto must pick
        log = tmp_path / f"faulty{attempt}.log"
        proc = _launch(tmp_path / "faulty.yaml", log)
        target = min(steps - 2, _max_logged_step(run) + rng.randint(1, 3))
        deadline = time.time() + 300
        while proc.poll() is None and _max_logged_step(run) < target and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))  # somewhere inside a step, a checkpoint write, or the metrics write
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        text = log.read_text()
        print(f"attempt {attempt}: killed={proc.returncode == -signal.SIGKILL} at logged step {_max_logged_step(run)}, "
              f"checkpoints {sorted(p.name for p in ck.glob('*'))}, resumed from {expect}")
        if expect is not None:
            assert f"resumed from {expect} " in text, text[-3000:]
        for p in ck.glob("step_*"):  # whatever the kill hit, a finished checkpoint directory is complete
            if verify_checkpoint(p) is None:
                known_bad.discard(p)
            assert p in known_bad or verify_checkpoint(p) is None, (p, verify_checkpoint(p))
        if attempt == 1:  # a torn write on disk (e.g. power loss): the newest checkpoint is cut short
            newest = max(ck.glob("step_*"))
            f = newest / "trainable.safetensors"
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
            corrupt = newest
            known_bad.add(newest)
    assert kills >= 2, "the run finished before it could be killed"
    final_log = tmp_path / "final.log"
    expect = find_latest_checkpoint(ck, warn=False)
    assert expect is not None and corrupt is not None
    proc = _launch(tmp_path / "faulty.yaml", final_log)
    assert proc.wait(timeout=600) == 0, final_log.read_text()[-3000:]
    assert f"resumed from {expect} " in final_log.read_text()
    logs = "".join((tmp_path / f"faulty{i}.log").read_text() for i in range(3)) + final_log.read_text()
    assert "skipping checkpoint" in logs and corrupt.name in logs  # the torn checkpoint was seen and skipped

    a, b = read_metrics(runs["ref"]), read_metrics(run)
    assert [r["step"] for r in b] == list(range(1, steps + 1))  # one record per step: redone steps replaced
    for ra, rb in zip(a, b):
        assert {k: v for k, v in ra.items() if k != "seconds"} == pytest.approx(
            {k: v for k, v in rb.items() if k != "seconds"}, rel=1e-6, abs=1e-7), (ra, rb)
    last = f"step_{steps:07d}"
    wa, wb = _weights(runs["ref"] / "checkpoints" / last), _weights(ck / last)
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], rtol=0, atol=1e-6) for k in wa)
    fa = load_file(str(runs["ref"] / "final" / "pytorch_lora_weights.safetensors"))
    fb = load_file(str(run / "final" / "pytorch_lora_weights.safetensors"))
    assert all(torch.allclose(fa[k], fb[k], rtol=0, atol=1e-6) for k in fa)  # EMA weights too


def test_resume_does_not_repeat_tensorboard_events_or_monitor_records(tmp_path, tiny_pipe_dir):
    """A run that died after logging step 3 but before checkpointing it redoes step 3 on resume: tensorboard shows
    one value per step (``purge_step``), hacking.jsonl loses the redone step's records, and the reward-hacking
    monitor continues with the peaks of steps 0-2 (replayed from eval.jsonl) instead of starting empty."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    kw = {"max_steps": 3, "save_every": 1, "eval_every": 1, "eval_at_start": True, "eval_prompts": "toy:heldout",
          "eval_per_category": 1, "heldout_rewards": ["toy_clip"], "report_to": "tensorboard"}
    full = make_trainer(tmp_path / "full", tiny_pipe_dir, "draft", **kw)
    full.train()
    make_trainer(tmp_path / "part", tiny_pipe_dir, "draft", **kw).train()
    part = tmp_path / "part"
    shutil.rmtree(part / "checkpoints" / "step_0000003")
    shutil.rmtree(part / "final")
    (part / "hacking.jsonl").write_text(json.dumps({"step": 3, "held_out": "heldout_toy_clip"}) + "\n")
    resumed = make_trainer(part, tiny_pipe_dir, "draft", resume="auto", **kw)
    resumed.train()
    assert (part / "hacking.jsonl").read_text() == ""  # the redone step's record is gone
    steps = [s for s, _ in resumed.monitor.tracks["heldout_toy_clip"].history]
    assert steps == [s for s, _ in full.monitor.tracks["heldout_toy_clip"].history] == [0, 1, 2, 3]
    ea = EventAccumulator(str(part / "tensorboard"))
    ea.Reload()
    assert [e.step for e in ea.Scalars("loss")] == [1, 2, 3]
    assert [e.step for e in ea.Scalars("oracle_accuracy")] == [0, 1, 2, 3]
