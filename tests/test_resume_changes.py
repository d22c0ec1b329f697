"""Resuming with a changed key is refused (naming it) unless resume_allow_changes=true, which records the change;
starting a finished run again adds no rows."""

import json

from rewardflow.cli import main
from trainer_utils import write_train_yaml


def _rows(path):
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.is_file() else []


def test_resume_with_a_changed_lr_is_refused_then_allowed_and_recorded(tmp_path, tiny_pipe_dir, capsys):
    run = tmp_path / "run"
    cfg = write_train_yaml(tmp_path / "c.yaml", "draft", tiny_pipe_dir, run, lr=1e-3, max_steps=2)
    assert main(["train", str(cfg), "-q"]) == 0
    capsys.readouterr()
    assert main(["train", str(cfg), "max_steps=3", "lr=0.5", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rewardflow: error: resume: ") and "other values of lr: lr (0.001 -> 0.5)" in err
    assert "resume_allow_changes=true" in err and len(_rows(run / "metrics.jsonl")) == 2
    # several changed keys (a method's too) are all named; a longer run (max_steps) is not a change
    assert main(["train", str(cfg), "max_steps=3", "lr=0.5", "kl_weight=0.5", "-q"]) == 2
    assert "other values of lr, kl_weight: lr (0.001 -> 0.5), kl_weight (0.0 -> 0.5)" in capsys.readouterr().err
    assert main(["train", str(cfg), "max_steps=3", "lr=0.5", "resume_allow_changes=true", "-q"]) == 0
    assert "resume_allow_changes: continuing from step 2 with lr=0.5 (was 0.001)" in capsys.readouterr().out
    (rec,) = _rows(run / "config_changes.jsonl")
    assert rec["step"] == 2 and rec["changes"] == {"lr": {"before": 0.001, "after": 0.5}}
    m = _rows(run / "metrics.jsonl")
    assert [r["step"] for r in m] == [1, 2, 3] and m[1]["lr"] == 0.001 and m[2]["lr"] == 0.5  # the new value is used
    assert "lr: 0.5" in (run / "config.yaml").read_text()
    # the checkpoint now carries lr=0.5: going on with it is no change
    assert main(["train", str(cfg), "max_steps=4", "lr=0.5", "-q"]) == 0
    assert len(_rows(run / "config_changes.jsonl")) == 1 and len(_rows(run / "metrics.jsonl")) == 4


def test_starting_a_finished_run_again_adds_no_rows(tmp_path, tiny_pipe_dir, capsys):
    run = tmp_path / "run"
    (tmp_path / "ev.txt").write_text("a red circle\ntwo blue squares\n")
    cfg = write_train_yaml(tmp_path / "c.yaml", "draft", tiny_pipe_dir, run, eval_prompts=str(tmp_path / "ev.txt"),
                           eval_at_start=True, heldout_rewards=["toy_clip_adv"])
    assert main(["train", str(cfg), "-q"]) == 0
    files = ("metrics.jsonl", "eval.jsonl", "summary.json")
    before = {f: (run / f).read_text() for f in files}
    assert [r["step"] for r in _rows(run / "eval.jsonl")] == [0, 2]
    capsys.readouterr()
    assert main(["train", str(cfg), "-q"]) == 0
    assert "already finished at step 2 (max_steps=2): nothing to do" in capsys.readouterr().out
    assert {f: (run / f).read_text() for f in files} == before
    # stopped after its last checkpoint but before the end (no summary yet): the final eval is redone, once
    (run / "summary.json").unlink()
    assert main(["train", str(cfg), "-q"]) == 0
    assert [r["step"] for r in _rows(run / "eval.jsonl")] == [0, 2]
    assert json.loads((run / "summary.json").read_text())["steps"] == 2
