"""The shared trainer: config splitting, effective batch, NaN guard, atomic checkpoints and exact resume."""

import json

import pytest
import torch
from safetensors.torch import load_file

from rewardflow.align.trainer import TrainConfig, load_train_config, split_config
from tests.trainer_utils import NaNReward, make_trainer, read_metrics

PROMPTS = ["a red circle", "two blue squares", "a green triangle", "a yellow square"]


def test_unknown_key_fails_before_any_model_loads(tmp_path, monkeypatch):
    from rewardflow.pipelines import registry

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the config was validated")

    monkeypatch.setattr(registry, "load_generator", boom)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("method: rwr\nmax_steps: 3\nbetta: 0.1\n")
    with pytest.raises(ValueError) as e:
        load_train_config(cfg, ["output_dir=x"])
    msg = str(e.value)
    assert "'betta'" in msg and "Did you mean 'beta'" in msg
    assert "max_steps" in msg and "lora_rank" in msg  # trainer keys
    assert "kl_weight" in msg and "mean_zero" in msg  # the method's keys
    from rewardflow.cli import main

    assert main(["train", str(cfg)]) == 2  # the CLI reports it as `rewardflow: error: ...`


def test_split_config_types_and_method_errors():
    t, m = split_config({"method": "flow_dpo", "max_steps": "7", "beta": 10, "lr": "3e-4"})
    assert isinstance(t, TrainConfig) and t.max_steps == 7 and t.lr == pytest.approx(3e-4)
    assert m.beta == 10.0 and isinstance(m.beta, float)
    with pytest.raises(KeyError, match="Known methods"):
        split_config({"method": "flow_dop"})
    with pytest.raises(ValueError, match="needs `method"):
        split_config({"max_steps": 2})
    with pytest.raises(ValueError, match="report_to"):
        split_config({"method": "rwr", "report_to": "mlflow"})


def test_shipped_configs_validate_with_overrides():
    for name in ("flow_dpo", "diffusion_dpo", "rwr", "draft"):
        t, _ = load_train_config(f"configs/toy/{name}.yaml", ["max_steps=5", "output_dir=/tmp/somewhere"])
        assert t.method == name and t.max_steps == 5 and t.output_dir == "/tmp/somewhere"


def test_effective_batch_arithmetic(tmp_path, tiny_pipe_dir):
    tr = make_trainer(tmp_path, tiny_pipe_dir, "rwr", batch_size=3, grad_accum=2, num_samples_per_prompt=4)
    e = tr.effective_batch()
    assert e["prompts_per_step"] == 3 * 2 * 1 and e["samples_per_step"] == 24
    assert "3 prompts/process x 2 grad_accum x 1 processes = 6 prompts" in tr.describe()
    assert "x 4 samples/prompt = 24 samples" in tr.describe()


def test_effective_batch_counts_rollout_reuse(tmp_path, tiny_pipe_dir):
    # updates_per_rollout=2: every step trains on a 2 x 3 group, but only every other step draws new samples
    tr = make_trainer(tmp_path, tiny_pipe_dir, "grpo", batch_size=2, group_size=3, rollout_steps=2,
                      updates_per_rollout=2, max_steps=4)
    e = tr.effective_batch()
    assert (e["samples_per_step"], e["updates_per_rollout"], e["new_samples_per_step"]) == (6, 2, 3)
    assert "6 / 2 = 3 new samples per step" in tr.describe()
    assert tr.train()["samples"] == 4 * 3
    assert make_trainer(tmp_path / "b", tiny_pipe_dir, "rwr").effective_batch()["updates_per_rollout"] == 1


def _params(tr):
    return [p.detach().clone() for p in tr.params]


@pytest.mark.parametrize("method", ["rwr", "draft", "flow_dpo"])
def test_nan_reward_leaves_weights_unchanged(tmp_path, tiny_pipe_dir, method):
    tr = make_trainer(tmp_path, tiny_pipe_dir, method, reward=NaNReward(), max_steps=1, weight_decay=0.1)
    with torch.no_grad():  # non-zero LoRA weights, so weight decay alone would change them if a step were taken
        for p in tr.params:
            p.add_(0.01)
    before = _params(tr)
    tr.train()
    assert all(torch.equal(a, b) for a, b in zip(before, tr.params))
    rec = read_metrics(tmp_path)[-1]
    assert rec["skipped"] == 1 and rec["skip_reason"] in ("no gradient", "non-finite loss")
    saved = load_file(str(tmp_path / "final" / "pytorch_lora_weights.safetensors"))
    assert all(torch.isfinite(v).all() for v in saved.values())


def test_partially_nan_rewards_are_masked_not_skipped(tmp_path, tiny_pipe_dir):
    tr = make_trainer(tmp_path, tiny_pipe_dir, "rwr", reward=NaNReward(bad=[0, 5]), max_steps=1,
                      num_samples_per_prompt=4)
    tr.train()
    rec = read_metrics(tmp_path)[-1]
    assert rec["skipped"] == 0 and rec["nonfinite_rewards"] == 2.0 and torch.isfinite(torch.tensor(rec["loss"]))


def test_nonfinite_gradient_skips_step(tmp_path, tiny_pipe_dir):
    tr = make_trainer(tmp_path, tiny_pipe_dir, "draft", max_steps=1)
    tr.params[0].register_hook(lambda g: torch.full_like(g, float("inf")))  # finite loss, infinite gradient
    before = _params(tr)
    tr.train()
    assert all(torch.equal(a, b) for a, b in zip(before, tr.params))
    rec = read_metrics(tmp_path)[-1]
    assert rec["skipped"] == 1 and rec["skip_reason"] == "non-finite gradient" and torch.isfinite(
        torch.tensor(rec["loss"]))


def test_checkpoints_are_atomic_and_pruned(tmp_path, tiny_pipe_dir):
    tr = make_trainer(tmp_path, tiny_pipe_dir, "rwr", max_steps=3, save_every=1, keep_checkpoints=2,
                      ema_decay=0.9)
    tr.train()
    ck = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert ck == ["step_0000002", "step_0000003"]  # no .tmp_ leftovers, oldest pruned
    meta = json.loads((tmp_path / "checkpoints" / "step_0000003" / "trainer.json").read_text())
    assert meta["step"] == 3 and meta["samples_seen"] == 3 * 2 * 4
    state = torch.load(tmp_path / "checkpoints" / "step_0000003" / "state.pt", weights_only=True)
    assert {"optimizer", "lr_scheduler", "ema", "rng", "method"} <= set(state)
    for f in ("config.yaml", "metrics.jsonl", "summary.json"):
        assert (tmp_path / f).is_file()


@pytest.mark.parametrize("method,extra", [("rwr", {"ema_decay": 0.9}), ("flow_dpo", {"ref_update_every": 2})])
def test_resume_gives_the_same_next_step(tmp_path, tiny_pipe_dir, method, extra):
    full = tmp_path / "full"
    make_trainer(full, tiny_pipe_dir, method, max_steps=3, **extra).train()
    part = tmp_path / "part"
    make_trainer(part, tiny_pipe_dir, method, max_steps=2, **extra).train()  # "interrupted" after step 2
    tr = make_trainer(part, tiny_pipe_dir, method, max_steps=3, resume="auto", **extra)
    tr.train()
    a, b = read_metrics(full), read_metrics(part)
    assert [r["step"] for r in b] == [1, 2, 3]
    assert b[-1]["loss"] == pytest.approx(a[-1]["loss"], rel=1e-5, abs=1e-7)
    assert b[-1]["grad_norm"] == pytest.approx(a[-1]["grad_norm"], rel=1e-5)
    wa = load_file(str(full / "checkpoints" / "step_0000003" / "trainable.safetensors"))
    wb = load_file(str(part / "checkpoints" / "step_0000003" / "trainable.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-7) for k in wa)


def test_eval_writes_grid_oracle_and_curve(tmp_path, tiny_pipe_dir):
    tr = make_trainer(tmp_path, tiny_pipe_dir, "draft", max_steps=1, eval_prompts="toy:heldout",
                      eval_per_category=1, eval_at_start=True)
    s = tr.train()
    assert 0.0 <= s["before"]["oracle_accuracy"] <= 1.0 and "eval_reward" in s["after"]
    assert (tmp_path / "samples" / "step_0000000.png").is_file() and (tmp_path / "reward_curve.png").is_file()
    ev = [json.loads(x) for x in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in ev] == [0, 1]


def _scripted_eval(tr, values: dict, calls: list):
    """Replace the trainer's evaluation by a scripted metric ``m`` per step; record the weights it saw."""
    def evaluate(tag=None):
        calls.append((tr.step, {k: v.detach().clone() for k, v in tr.trainable_state().items()}))
        return {"step": tr.step, "samples": tr.samples_seen, "m": values[tr.step]}
    tr.evaluate = evaluate


def test_best_metric_saves_the_best_weights_and_early_stops(tmp_path, tiny_pipe_dir):
    tr = make_trainer(tmp_path, tiny_pipe_dir, "draft", max_steps=10, lora_rank=0, eval_every=1,
                      eval_at_start=True, best_metric="m", early_stop_patience=2)
    calls = []
    _scripted_eval(tr, {0: 0.1, 1: 0.5, 2: 0.3, 3: 0.2, 4: 9.0}, calls)
    s = tr.train()
    # 0.5 at step 1 is never beaten: steps 2 and 3 are the two evaluations without improvement -> stop after step 3
    assert s["early_stopped"] and s["steps"] == 3 and [c[0] for c in calls] == [0, 1, 2, 3]  # no extra final eval
    assert s["best"]["step"] == 1 and s["best"]["value"] == 0.5 and s["after"]["m"] == 0.2
    saved = load_file(str(tmp_path / "best" / "trainable.safetensors"))
    at_step1 = calls[1][1]
    assert saved.keys() == at_step1.keys()
    assert all(torch.equal(saved[k], at_step1[k]) for k in saved)
    assert not all(torch.equal(saved[k], calls[3][1][k]) for k in saved)  # the weights did move after step 1
    info = json.loads((tmp_path / "best" / "best.json").read_text())
    assert info["step"] == 1 and info["eval"]["m"] == 0.5
    assert not list(tmp_path.glob(".best.*")) and (tmp_path / "final" / "trainable.safetensors").is_file()


def test_best_metric_min_mode_and_a_resumed_run_keeps_counting(tmp_path, tiny_pipe_dir):
    vals = {0: 3.0, 1: 1.0, 2: 2.0, 3: 5.0, 4: 0.0}
    first = make_trainer(tmp_path, tiny_pipe_dir, "draft", max_steps=2, eval_every=1, eval_at_start=True,
                         best_metric="m", best_mode="min", early_stop_patience=2, save_every=1)
    _scripted_eval(first, vals, [])
    first.train()  # evaluations at steps 0, 1, 2 (best 1.0 at step 1; one evaluation without improvement)
    resumed = make_trainer(tmp_path, tiny_pipe_dir, "draft", max_steps=10, eval_every=1, eval_at_start=True,
                           best_metric="m", best_mode="min", early_stop_patience=2, resume="auto")
    calls = []
    _scripted_eval(resumed, vals, calls)
    s = resumed.train()
    # the replayed eval.jsonl carries the count over: step 3 is the second evaluation without improvement
    assert [c[0] for c in calls] == [3] and s["early_stopped"] and s["steps"] == 3
    assert s["best"]["step"] == 1 and s["best"]["value"] == 1.0


def test_best_tracker_replay_and_bad_keys(tmp_path):
    from rewardflow.align.trainer import BestTracker

    f = tmp_path / "eval.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in [{"step": 0, "m": 0.2}, {"step": 5, "m": float("nan")},
                                                         {"step": 10, "m": 0.4}, {"step": 15, "m": 0.4},
                                                         {"step": 20, "other": 1.0}]))
    t = BestTracker("m", "max", patience=3)
    t.replay(f)
    assert (t.value, t.step, t.bad, t.should_stop) == (0.4, 10, 1, False)  # ties do not improve; NaN never best
    with pytest.raises(KeyError, match="best_metric='x' is not an evaluation key.*eval_reward, oracle_accuracy"):
        BestTracker("x").update({"step": 1, "samples": 8, "eval_reward": 0.5, "oracle_accuracy": 0.1})


@pytest.mark.parametrize("overrides, message", [
    ({"early_stop_patience": 2, "eval_every": 5}, "early_stop_patience needs best_metric"),
    ({"early_stop_patience": 2, "best_metric": "eval_reward"}, "early_stop_patience needs eval_every > 0"),
    ({"best_metric": "heldout_toy_clip"}, r"names a held-out reward that is not in heldout_rewards \[\]"),
    ({"best_metric": "eval_reward", "best_mode": "maximum"}, "best_mode must be max or min"),
])
def test_best_metric_config_errors(overrides, message):
    from rewardflow.align.trainer import split_config

    with pytest.raises(ValueError, match=message):
        split_config({"method": "draft", **overrides})


def test_lr_scheduler_cosine_with_warmup_and_set_max_steps(tmp_path, tiny_pipe_dir):
    import math

    tr = make_trainer(tmp_path, tiny_pipe_dir, "draft", max_steps=100, lr=1e-3, lr_warmup_steps=2,
                      lr_scheduler="cosine")
    tr.set_max_steps(6)  # the schedule follows the new length
    s = tr.train()
    lrs = [r["lr"] for r in read_metrics(tmp_path)]
    # diffusers' cosine: s/w during warm-up, then 0.5 * (1 + cos(pi * (s - w) / (T - w))); logged after each step
    want = [1e-3 * (k / 2 if k < 2 else 0.5 * (1 + math.cos(math.pi * (k - 2) / 4))) for k in range(1, 7)]
    assert s["steps"] == 6 and lrs == pytest.approx(want, abs=1e-12) and lrs[-1] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="lr_scheduler must be one of"):
        split_config({"method": "draft", "lr_scheduler": "cosine_annealing"})
    with pytest.raises(RuntimeError, match="before the first step"):
        tr.set_max_steps(10)


def test_early_stop_when_every_evaluation_is_nan(tmp_path, tiny_pipe_dir):
    """A metric that is never finite never becomes the best and still stops the run (no crash on the message)."""
    tr = make_trainer(tmp_path, tiny_pipe_dir, "draft", max_steps=10, eval_every=1, eval_at_start=True,
                      best_metric="m", early_stop_patience=2)
    _scripted_eval(tr, {k: float("nan") for k in range(11)}, [])
    s = tr.train()
    assert s["early_stopped"] and s["steps"] == 1 and s["best"]["value"] is None
    assert not (tmp_path / "best").exists()
