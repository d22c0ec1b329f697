import subprocess
import sys
from pathlib import Path

import pytest

from rewardflow.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_rewards_command_lists_registry_wrappers_and_spec_syntax(capsys):
    from rewardflow.rewards.combine import build_reward

    assert main(["rewards"]) == 0
    out = capsys.readouterr().out
    assert "toy_clip" in out
    (line,) = [ln for ln in out.splitlines() if ln.startswith("segmental(REWARD) ")]
    assert line.split()[1:4] == ["video", "as", "REWARD"] and "SegVR" in line
    assert "NAME:W,NAME:W,...         a weighted sum" in out and "e.g. hpsv2.1:5,imagereward:1" in out
    assert "--weights NAME=PATH" in out
    # the syntax it shows builds: a wrapper inside a weighted sum
    r = build_reward("segmental(toy_clip):1,toy_video:0.5")
    assert [x.name for x in r.rewards] == ["segmental(toy_clip)", "toy_video"] and r.weights == [1.0, 0.5]


def test_python_m_rewardflow_help():
    out = subprocess.run([sys.executable, "-m", "rewardflow", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "demo" in out.stdout


def test_unknown_command_and_missing_weights(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["dmeo"])
    assert main(["demo", "--generator", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert "train-generator" in capsys.readouterr().err


def test_config_unknown_key_names_valid_keys(tmp_path):
    from rewardflow.config import load_config
    from rewardflow.commands.demos.image import DemoConfig

    with pytest.raises(ValueError, match=r"unknown config key 'iteratons'.*Did you mean 'iterations'.*Valid keys"):
        load_config(DemoConfig, None, ["iteratons=3"])
    with pytest.raises(ValueError, match="expects int"):
        load_config(DemoConfig, None, ["steps=many"])
    cfg = load_config(DemoConfig, ROOT / "configs/toy/demo.yaml", ["iterations=3", "weights=[1, 2]"])
    assert cfg.iterations == 3 and cfg.weights == (1.0, 2) and cfg.rewards == ("toy_clip", "toy_clip_adv")
    assert load_config(DemoConfig, ROOT / "configs/toy/demo.yaml") == DemoConfig()  # the YAML documents the defaults
    assert main(["demo", "iteratons=3", "--out", str(tmp_path)]) == 2
