"""Reward weights everywhere: `--weights [NAME=]PATH` on score, noise-opt, eval and eval-rewards; a missing weight file
offline is one `rewardflow: error:` line naming the file and the flag; ReNO's reward set with its CLIP term
(logit-scaled CLIP ViT-H-14, as ExplainableML/ReNO rewards/clip.py); `noise-opt --config` recipes."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rewardflow.cli import main
from rewardflow.testing.tiny_rewards import (register_tiny_open_clip, write_hf_clip, write_hps_checkpoints,
                                             write_imagereward, write_open_clip_checkpoint)

SAMPLES = Path(__file__).resolve().parents[1] / "assets" / "eval_samples"
TINY = "rf-tiny-clip-weights"


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / "a.png")
    return d


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and "it/s" not in ln and "Loading" not in ln]
    assert len(lines) == 1 and lines[0].startswith("rewardflow: error: "), err
    assert "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------------------------------- offline, missing weights
@pytest.mark.parametrize("name,file", [("clip", "ViT-B-32/openai"), ("hpsv2.1", "HPS_v2.1_compressed.pt"),
                                       ("pickscore", "yuvalkirstain/PickScore_v1"), ("imagereward", "ImageReward.pt"),
                                       ("aesthetic", "sac+logos+ava1-l14-linearMSE.pth"),
                                       ("videoreward", "KwaiVGI/VideoReward")])
def test_missing_weights_offline_is_one_line_naming_file_and_flag(image_dir, capsys, name, file):
    assert main(["score", "--reward", name, "--images", str(image_dir), "--prompt", "a cat"]) == 2
    line = _one_error_line(capsys)
    assert file in line and f"--weights {name}=PATH" in line, line


def test_missing_weights_in_noise_opt_eval_and_eval_rewards(image_dir, tmp_path, capsys):
    assert main(["noise-opt", "--model", "toy", "--prompt", "a red circle", "--reward", "hpsv2.1",
                 "--iterations", "1", "--out", str(tmp_path / "n")]) == 2
    assert "--weights hpsv2.1=PATH" in _one_error_line(capsys)
    assert main(["eval", "--model", "toy", "--prompts", "toy:heldout", "--per-category", "1", "--reward",
                 "toy_clip,pickscore", "--out", str(tmp_path / "e")]) == 2
    line = _one_error_line(capsys)
    assert "PickScore_v1" in line and "--weights pickscore=PATH" in line
    assert not (tmp_path / "e" / "images").exists()  # failed before sampling
    assert main(["eval-rewards", "--dataset", str(SAMPLES / "pickapic"), "--format", "pickapic", "--reward",
                 "imagereward", "--bootstrap", "0"]) == 2
    assert "--weights imagereward=PATH" in _one_error_line(capsys)
    # a file that does not exist, given with --weights
    assert main(["score", "--reward", "hpsv2.1", "--images", str(image_dir), "--prompt", "x",
                 "--weights", str(tmp_path / "HPS_v2.1_compressed.pt")]) == 2
    line = _one_error_line(capsys)
    assert str(tmp_path / "HPS_v2.1_compressed.pt") in line and "--weights hpsv2.1=PATH" in line


def test_weights_flag_errors(image_dir, tmp_path, capsys):
    assert main(["eval", "--model", "toy", "--prompts", "toy:heldout", "--reward", "toy_clip", "--reward",
                 "toy_clip_adv", "--weights", str(tmp_path), "--out", str(tmp_path / "e")]) == 2
    assert "write --weights NAME=PATH" in _one_error_line(capsys)
    assert main(["score", "--reward", "toy_clip", "--images", str(image_dir), "--prompt", "x", "--weights",
                 f"hpsv2.1={tmp_path}"]) == 2
    assert "'hpsv2.1' is not a reward of the spec" in _one_error_line(capsys)


# ------------------------------------------------------------------------------------- --weights reaches every command
@pytest.fixture(scope="module")
def toy_clip_copy(tmp_path_factory):
    """The shipped toy_clip weights copied elsewhere, so --weights (not the default path) must be used."""
    import shutil

    from rewardflow.toy.assets import asset_path

    d = tmp_path_factory.mktemp("w") / "toy_clip_copy"
    shutil.copytree(asset_path("reward"), d)
    return d


def test_weights_reach_noise_opt_eval_and_eval_rewards(toy_clip_copy, tmp_path, capsys):
    w = f"toy_clip={toy_clip_copy}"
    assert main(["noise-opt", "--model", "toy", "--prompt", "a red circle", "--reward", "toy_clip", "--weights", w,
                 "--iterations", "2", "--out", str(tmp_path / "n")]) == 0
    assert main(["eval", "--model", "toy", "--prompts", "toy:heldout", "--per-category", "1", "--reward",
                 "toy_clip", "--reward", "toy_oracle", "--weights", w, "--bootstrap", "0", "--out",
                 str(tmp_path / "e")]) == 0
    assert main(["eval-rewards", "--dataset", str(SAMPLES / "pickapic"), "--format", "pickapic", "--reward",
                 "toy_clip", "--weights", w, "--bootstrap", "0"]) == 0
    # the path really is used: a missing copy fails in every command
    bad = f"toy_clip={tmp_path / 'gone'}"
    assert main(["eval-rewards", "--dataset", str(SAMPLES / "pickapic"), "--format", "pickapic", "--reward",
                 "toy_clip", "--weights", bad, "--bootstrap", "0"]) == 2
    assert str(tmp_path / "gone") in capsys.readouterr().err


# ------------------------------------------------------------------------------------- ReNO's reward set
@pytest.fixture(scope="module")
def reno_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("reno")
    name = register_tiny_open_clip(root / "cfg", TINY, image_size=64, patch_size=16)
    return {"name": name, "hps": write_hps_checkpoints(root / "hps", name),
            "ir": write_imagereward(root / "ir"), "pick": write_hf_clip(root / "pick", 64, 16, seed=1),
            "clip": write_hf_clip(root / "clip", 64, 16, seed=2),
            "oc": write_open_clip_checkpoint(root / "oc.pt", name, seed=3)}


def test_clip_logit_scale_option_is_renos_clip_term(reno_files):
    from rewardflow.rewards.base import load_reward

    plain = load_reward("clip", path=str(reno_files["clip"]))
    scaled = load_reward("clip", path=str(reno_files["clip"]), logit_scale=True)
    x = torch.rand(2, 3, 64, 64)
    prompts = ["a red cat", "two blue dogs"]
    s = scaled.backbone.model.logit_scale.exp().item()
    assert s == pytest.approx(np.exp(3.0), rel=1e-5)  # the tiny model's logit_scale_init_value
    assert torch.allclose(scaled(x, prompts), s * plain(x, prompts), rtol=1e-5)
    with pytest.raises(ValueError, match="not both"):
        from rewardflow.rewards.clip import CLIPReward

        CLIPReward(plain.backbone, weight=2.5, logit_scale=True)


def test_reno_paper_rewards_with_their_clip_model(reno_files):
    """RENO_PAPER_REWARDS + RENO_PAPER_REWARD_KWARGS: 5 HPSv2.1 + 1 ImageReward + 0.05 PickScore + 0.01 * (s * cos)
    with CLIP loaded from the ViT-H-14 repo layout (here a tiny transformers CLIP at a local path)."""
    from rewardflow.align.inference.reno import RENO_PAPER_REWARD_KWARGS, RENO_PAPER_REWARDS
    from rewardflow.rewards.base import load_reward
    from rewardflow.rewards.combine import build_reward

    assert RENO_PAPER_REWARD_KWARGS["clip"] == {"path": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "model": "ViT-H-14",
                                                "logit_scale": True}
    kw = {"hpsv2.1": {"path": str(reno_files["hps"]), "model": reno_files["name"]},
          "imagereward": {"path": str(reno_files["ir"])}, "pickscore": {"path": str(reno_files["pick"])},
          "clip": {**RENO_PAPER_REWARD_KWARGS["clip"], "path": str(reno_files["clip"])}}
    total = build_reward(RENO_PAPER_REWARDS, **kw)
    x = torch.rand(2, 3, 64, 64)
    prompts = ["a red cat", "two blue dogs"]
    got = total(x, prompts)
    parts = {n: load_reward(n, **kw[n])(x, prompts) for n in kw}
    clip = load_reward("clip", path=str(reno_files["clip"]))
    scaled_clip = clip.backbone.logit_scale() * clip(x, prompts)
    assert torch.allclose(parts["clip"], scaled_clip, rtol=1e-5)
    want = 5 * parts["hpsv2.1"] + parts["imagereward"] + 0.05 * parts["pickscore"] + 0.01 * scaled_clip
    assert torch.allclose(got, want, atol=1e-4)
    # a local open_clip file of the same model: the ViT-H-14 architecture name travels with the options
    oc = build_reward("clip", clip={**RENO_PAPER_REWARD_KWARGS["clip"], "path": str(reno_files["oc"]),
                                    "model": reno_files["name"]})
    assert oc.logit_scale and oc.backbone.backend == "open_clip"


def test_noise_opt_config_recipe_with_reward_kwargs(reno_files, tmp_path, capsys):
    """A noise-opt recipe (YAML of flags + reward_kwargs); a command-line flag wins over the file."""
    cfg = tmp_path / "reno.yaml"
    cfg.write_text(f"model: toy\nreward: clip:0.01\niterations: 3\nlr: 5.0\nsteps: 2\nprompt: a red circle\n"
                   f"reward_kwargs:\n  clip: {{path: {reno_files['oc']}, model: {reno_files['name']}, "
                   "logit_scale: true}\n")
    out = tmp_path / "o"
    assert main(["noise-opt", "--config", str(cfg), "--iterations", "2", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["reward"] == "clip:0.01" and s["steps"] == 2 and len(json.loads((out / "curve.json").read_text())[0]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: toy\niteratons: 3\n")
    assert main(["noise-opt", "--config", str(bad), "--prompt", "x"]) == 2
    assert "unknown noise-opt key 'iteratons'. Did you mean 'iterations'?" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- training: reward_kwargs
TOY_FAST = ["max_steps=2", "batch_size=2", "sample_steps=2", "eval_per_category=1", "save_every=0", "eval_every=0",
            "report_to=none"]


def test_train_reward_kwargs_reach_the_reward_and_heldout_rewards(reno_files, tmp_path):
    import yaml

    out = tmp_path / "run"
    kw = {"clip": {"path": str(reno_files["oc"]), "model": reno_files["name"], "logit_scale": True},
          "hpsv2.1": {"path": str(reno_files["hps"]), "model": reno_files["name"]}}
    assert main(["train", "configs/toy/draft.yaml", "reward=clip", f"reward_kwargs={json.dumps(kw)}",
                 "heldout_rewards=[hpsv2.1]", f"output_dir={out}", *TOY_FAST]) == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["reward_kwargs"]["clip"]["logit_scale"] is True
    evals = [json.loads(ln) for ln in (out / "eval.jsonl").read_text().splitlines()]
    assert all("heldout_hpsv2.1" in e for e in evals)
    assert abs(evals[-1]["eval_reward"]) > 1.0  # logit-scaled CLIP (exp(logit_scale) * cos), not a cosine in [-1, 1]


def test_train_missing_reward_weights_name_the_config_key(tmp_path, capsys):
    assert main(["train", "configs/toy/draft.yaml", "reward=hpsv2.1", f"output_dir={tmp_path}", *TOY_FAST]) == 2
    line = _one_error_line(capsys)
    assert "HPS_v2.1_compressed.pt" in line and "reward_kwargs: {hpsv2.1: {path: PATH}}" in line


def test_train_refuses_reward_kwargs_of_another_reward_and_toy_sizes(tmp_path, capsys):
    assert main(["train", "configs/toy/draft.yaml", "reward_kwargs={clip: {path: x.pt}}",
                 f"output_dir={tmp_path}", *TOY_FAST]) == 2
    assert "reward_kwargs names ['clip'], which are not rewards of this run" in _one_error_line(capsys)
    assert main(["train", "configs/toy/draft.yaml", "height=64", f"output_dir={tmp_path}", *TOY_FAST]) == 2
    assert "generator option 'height' is not supported by adapter 'toy'" in _one_error_line(capsys)


@pytest.mark.slow
def test_a_random_vit_b_32_checkpoint_via_weights_everywhere(tmp_path, image_dir, capsys):
    """The issue's check: an open_clip ViT-B-32 checkpoint saved locally (random weights) drives `clip` offline in
    score, noise-opt, eval and eval-rewards through --weights (about 10 s per load on a CPU)."""
    import open_clip

    torch.manual_seed(0)
    ckpt = tmp_path / "vit_b_32.pt"
    model = open_clip.create_model("ViT-B-32")
    torch.save({"state_dict": {k: v.half() for k, v in model.state_dict().items()}}, ckpt)
    w = ["--weights", f"clip={ckpt}"]
    assert main(["score", "--reward", "clip", "--images", str(image_dir), "--prompt", "x", *w]) == 0
    assert main(["noise-opt", "--model", "toy", "--prompt", "a red circle", "--reward", "clip", "--iterations", "2",
                 "--out", str(tmp_path / "n"), *w]) == 0
    assert main(["eval", "--model", "toy", "--prompts", "toy:heldout", "--per-category", "1", "--reward", "clip",
                 "--bootstrap", "0", "--out", str(tmp_path / "e"), *w]) == 0
    assert main(["eval-rewards", "--dataset", str(SAMPLES / "pickapic"), "--format", "pickapic", "--reward", "clip",
                 "--bootstrap", "0", *w]) == 0
    # the training command, as written (offline: the checkpoint is the only CLIP weights there are)
    assert main(["train", "configs/toy/draft.yaml", "reward=clip", f"reward_kwargs={{clip: {{path: {ckpt}}}}}",
                 "max_steps=2", f"output_dir={tmp_path / 't'}"]) == 0
    assert (tmp_path / "t" / "final" / "pytorch_lora_weights.safetensors").is_file()
