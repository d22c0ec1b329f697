"""Config as the single source of its docs: every trainer and method key has help text, docs/usage/config.md is
what the code generates, and `rewardflow train --help-config` prints the same keys."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from rewardflow.align.docs import config_markdown
from rewardflow.align.inference.nrg import NRGConfig
from rewardflow.align.inference.reno import ReNOConfig
from rewardflow.align.method import get_method, list_methods
from rewardflow.align.trainer import TrainConfig, load_train_config
from rewardflow.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_every_key_has_help():
    for cls in [TrainConfig, ReNOConfig, NRGConfig] + [get_method(m).config_class for m in list_methods()]:
        missing = [f.name for f in dataclasses.fields(cls) if not f.metadata.get("help")]
        assert not missing, f"{cls.__name__} keys without help text: {missing}"


def test_config_page_matches_the_code():
    page = (ROOT / "docs" / "usage" / "config.md").read_text()
    assert page == config_markdown(), ("docs/usage/config.md drifted from the config dataclasses; regenerate it "
                                       "with: python -m rewardflow.align.docs > docs/usage/config.md")
    for f in dataclasses.fields(TrainConfig):
        assert f"| `{f.name}` |" in page


def test_help_config_lists_trainer_and_method_keys(capsys):
    assert main(["train", "--help-config", "grpo"]) == 0
    out = capsys.readouterr().out
    for f in dataclasses.fields(TrainConfig):
        assert f"  {f.name} (" in out
    for f in dataclasses.fields(get_method("grpo").config_class):
        assert f"  {f.name} (" in out
    assert "group_size (int, default 24)" in out


@pytest.mark.parametrize("override,msg", [
    ("group_size=1", "group_size must be >= 2"),
    ("beta=-1", "beta must be >= 0"),
    ("clip_range=0", "clip_range must be a positive number"),
    ("updates_per_rollout=0", "updates_per_rollout must be >= 1"),
])
def test_method_values_fail_at_config_time_before_anything_loads(override, msg):
    # split_config builds the method's config dataclass: __post_init__ validates it, no model or reward is built
    with pytest.raises(ValueError, match=msg):
        load_train_config(ROOT / "configs" / "toy" / "grpo.yaml", [override])


@pytest.mark.parametrize("override,msg", [
    ("k=1", "k must be > 1"),
    ("t_per_pair=0", "t_per_pair must be >= 1"),
    ("tie_tol=-0.1", "tie_tol must be >= 0"),
])
def test_latent_reward_values_fail_at_config_time(override, msg):
    with pytest.raises(ValueError, match=msg):
        load_train_config(ROOT / "configs" / "toy" / "latent_reward.yaml", [override])


@pytest.mark.parametrize("cls,kw,msg", [
    (ReNOConfig, {"optimizer": "lbfgs"}, "optimizer must be 'sgd' or 'adam'"),
    (ReNOConfig, {"autocast": "fp8"}, "autocast must be one of"),
    (ReNOConfig, {"iterations": 0}, "iterations must be >= 1"),
    (ReNOConfig, {"grad_clip": 0.0}, "grad_clip must be a positive number"),
    (ReNOConfig, {"lr": float("nan")}, "lr must be a positive number"),
    (ReNOConfig, {"reg_weight": -1.0}, "reg_weight must be >= 0"),
    (NRGConfig, {"steps": 0}, "steps must be >= 1"),
    (NRGConfig, {"t_min": 0.8, "t_max": 0.2}, "0 <= t_min <= t_max <= 1"),
    (NRGConfig, {"weights": {"score": float("inf")}}, "weights must be finite"),
])
def test_inference_configs_check_their_values_when_built(cls, kw, msg):
    with pytest.raises(ValueError, match=msg):
        cls(**kw)
    cls()  # the defaults are valid


def test_nrg_weights_default_is_a_fresh_dict_per_config():
    a, b = NRGConfig(), NRGConfig()
    a.weights["VQ"] = 1.0
    assert b.weights == {"score": 1.0}


def test_print_config_refuses_a_bad_method_value(capsys):
    assert main(["train", "--print-config", str(ROOT / "configs" / "toy" / "flow_dpo.yaml"), "beta=0"]) == 2
    assert "beta must be > 0" in capsys.readouterr().err
