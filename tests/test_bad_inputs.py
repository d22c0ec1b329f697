"""Bad inputs: each fails with a message naming the problem and the fix, or is skipped/masked, and nothing already
done is lost. Cases tested elsewhere are not repeated here (docs/usage/robustness.md lists where each one is):

* corrupt / truncated image: tests/test_score_cli.py::test_image_io_formats_alpha_and_errors (load_image) and
  ::test_score_cli_csv_and_json (`rewardflow score` skips it and scores the rest);
* corrupt / truncated video: tests/test_video_io.py::test_corrupt_and_truncated_files_name_the_file;
* unknown reward name: tests/test_rewards.py::test_registry_lists_and_rejects_unknown (and `rewardflow train` below);
* mistyped config key: tests/test_trainer.py::test_unknown_key_fails_before_any_model_loads,
  tests/test_cli.py::test_config_unknown_key_names_valid_keys;
* judge timeout / garbage reply -> NaN, never 0: tests/test_judge.py::test_hanging_server_times_out_retries_with_
  backoff_then_nan, ::test_malformed_replies_give_nan_not_zero, ::test_nan_is_masked_through_weighted_reward;
* NaN reward: tests/test_trainer.py::test_nan_reward_leaves_weights_unchanged,
  ::test_partially_nan_rewards_are_masked_not_skipped;
* wrong media shape / dtype / range / count: tests/test_rewards.py::test_reward_input_validation.
"""

import errno
import json
import shutil

import pytest
import torch

from rewardflow.align.trainer import CheckpointWriteError, verify_checkpoint
from rewardflow.cli import main
from tests.trainer_utils import make_trainer, read_metrics, write_train_yaml


@pytest.fixture
def train_cfg(tmp_path, tiny_pipe_dir):
    return write_train_yaml(tmp_path / "train.yaml", "rwr", tiny_pipe_dir, tmp_path / "run", num_samples_per_prompt=2)


@pytest.fixture
def no_model_load(monkeypatch):
    from rewardflow.pipelines import registry

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the bad input was reported")

    monkeypatch.setattr(registry, "load_generator", boom)


# ------------------------------------------------------------------------------------------ `rewardflow train`


@pytest.mark.parametrize("override,msg", [
    ("prompts=EMPTY", ["no prompts in", "one prompt per line"]),
    ("prompts=MISSING", ["prompt file not found", "one prompt per line"]),
    ("reward=toy_clipp", ["unknown reward 'toy_clipp'", "Did you mean 'toy_clip'"]),
    ("heldout_rewards=[toy_oracle, nope]", ["unknown reward 'nope'", "Known rewards"]),
])
def test_train_input_errors_are_reported_before_the_model_loads(train_cfg, tmp_path, capsys, no_model_load,
                                                                override, msg):
    (tmp_path / "empty.txt").write_text("\n  \n")
    override = override.replace("EMPTY", str(tmp_path / "empty.txt")).replace("MISSING", str(tmp_path / "no.txt"))
    assert main(["train", str(train_cfg), override]) == 2
    err = capsys.readouterr().err
    assert "rewardflow: error:" in err and all(m in err for m in msg), err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_missing_weight_file_names_the_file_and_the_fix(train_cfg, tmp_path, tiny_pipe_dir, capsys):
    broken = tmp_path / "pipe"
    shutil.copytree(tiny_pipe_dir, broken)
    for f in (broken / "unet").glob("*.safetensors"):
        f.unlink()
    assert main(["train", str(train_cfg), f"model={broken}"]) == 2
    err = capsys.readouterr().err
    assert f"component 'unet' (UNet2DConditionModel): no weight file in {broken / 'unet'}" in err
    assert f"expected e.g. {broken / 'unet' / 'diffusion_pytorch_model.safetensors'}" in err


# ------------------------------------------------------------------------------------------ NaN loss


def test_nan_loss_skips_the_step_and_leaves_weights_and_optimizer_unchanged(tmp_path, tiny_pipe_dir, capsys):
    tr = make_trainer(tmp_path, tiny_pipe_dir, "rwr", max_steps=2, weight_decay=0.1, num_samples_per_prompt=2)
    real_loss, calls = tr.method.loss, []

    def loss(batch, step):  # the first step's loss is NaN, the second is real
        value, diag = real_loss(batch, step)
        calls.append(step)
        return (value * float("nan"), diag) if step == 0 else (value, diag)

    tr.method.loss = loss
    before = [p.detach().clone() for p in tr.params]
    rec = tr.train_step()
    assert rec["skipped"] == 1 and rec["skip_reason"] == "non-finite loss"
    assert all(torch.equal(a, p) for a, p in zip(before, tr.params))
    assert not tr.optimizer.state_dict()["state"]  # Adam took no step: no moments were touched
    assert tr.lr_scheduler.last_epoch == 0
    tr.step = 1
    rec = tr.train_step()
    assert rec["skipped"] == 0 and any(not torch.equal(a, p) for a, p in zip(before, tr.params))
    # through the loop: the skip is logged and printed, training goes on
    tr2 = make_trainer(tmp_path / "loop", tiny_pipe_dir, "rwr", max_steps=2, num_samples_per_prompt=2)
    real2 = tr2.method.loss

    def loss2(batch, step):
        value, diag = real2(batch, step)
        return (value * float("nan") if step == 0 else value), diag

    tr2.method.loss = loss2
    tr2.train()
    m = read_metrics(tmp_path / "loop")
    assert [r["skipped"] for r in m] == [1, 0] and m[0]["skip_reason"] == "non-finite loss"
    assert "step 1: skipped (non-finite loss); weights unchanged" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ media given to a reward


def test_reward_media_modality_dtype_and_device(tiny_reward_dir):
    from rewardflow.rewards.base import Reward, load_reward

    class Frames(Reward):
        name, modality = "frames", "video"

        def score(self, media, prompts):
            return media.flatten(1).mean(1)

    with pytest.raises(ValueError, match=r"frames is a video reward: media must be \[B, T, 3, H, W\], got \(2, 3"):
        Frames()(torch.rand(2, 3, 8, 8), ["a", "b"])
    r = load_reward("toy_clip", path=str(tiny_reward_dir))
    x, prompts = torch.rand(2, 3, 32, 32), ["a red circle", "two blue squares"]
    want = r(x, prompts)
    # other float dtypes are accepted and scored in the reward's own precision
    assert torch.allclose(r(x.double(), prompts), want, atol=1e-6)
    assert torch.allclose(r(x.half(), prompts), want, atol=2e-2)
    with pytest.raises(TypeError, match="media must be a float tensor in \\[0, 1\\], got Tensor torch.int64"):
        r(torch.zeros(2, 3, 32, 32, dtype=torch.long), prompts)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device (CUDA)")
def test_reward_moves_media_from_another_device(tiny_reward_dir):
    from rewardflow.rewards.base import load_reward

    r = load_reward("toy_clip", path=str(tiny_reward_dir))  # on the CPU
    x, prompts = torch.rand(2, 3, 32, 32), ["a red circle", "two blue squares"]
    assert torch.allclose(r(x.cuda(), prompts).cpu(), r(x, prompts), atol=1e-5)
    assert torch.allclose(r.to("cuda")(x, prompts).cpu(), r.to("cpu")(x, prompts), atol=1e-5)


# ------------------------------------------------------------------------------------------ offline DPO pairs


def _png(path, size, color=(255, 0, 0)):
    from PIL import Image

    Image.new("RGB", (size, size), color).save(path)


def test_pair_dataset_with_missing_files_fails_at_construction(tmp_path):
    from rewardflow.align.methods.dpo import PreferencePairs

    _png(tmp_path / "w.png", 32)
    rows = [{"prompt": "a", "chosen": "w.png", "rejected": "gone.png"},
            {"prompt": "b", "chosen": "w.png", "rejected": "sub/also_gone.png"}]
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(FileNotFoundError) as e:
        PreferencePairs(str(tmp_path / "pairs.jsonl"))
    msg = str(e.value)
    assert "2 file(s) named by the preference pairs do not exist" in msg and "'gone.png'" in msg
    assert str(tmp_path / "gone.png") in msg and "relative to the dataset's folder" in msg


def test_pair_dataset_mismatched_or_corrupt_images(tmp_path, tiny_pipe_dir):
    from rewardflow.align.methods.dpo import DPOConfig, FlowDPO
    from rewardflow.align.method import MethodContext
    from rewardflow.io.images import ImageReadError
    from rewardflow.toy.generator import ToyGenerator

    gen = ToyGenerator.from_pretrained(tiny_pipe_dir)
    _png(tmp_path / "w.png", 32)
    _png(tmp_path / "big.png", 48, (0, 0, 255))
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"prompt": "a red circle", "chosen": "w.png",
                                                      "rejected": "big.png"}))
    m = FlowDPO(DPOConfig(pairs="offline", dataset=str(tmp_path / "pairs.jsonl")), MethodContext(gen, None))
    with pytest.raises(ValueError, match=r"'big.png' .* gives latents .* differ in size; set resolution=N"):
        m.collect(["x"], 0)
    m = FlowDPO(DPOConfig(pairs="offline", dataset=str(tmp_path / "pairs.jsonl"), resolution=32),
                MethodContext(gen, None))
    (b,) = m.collect(["x"], 0)  # the fix works
    assert b["x0_w"].shape == b["x0_l"].shape
    (tmp_path / "big.png").write_bytes((tmp_path / "big.png").read_bytes()[:60])  # truncated on disk
    m = FlowDPO(DPOConfig(pairs="offline", dataset=str(tmp_path / "pairs.jsonl"), resolution=32),
                MethodContext(gen, None))
    with pytest.raises(ImageReadError, match="cannot read image .*big.png"):
        m.collect(["x"], 0)


# ------------------------------------------------------------------------------------------ disk full


@pytest.mark.parametrize("target,fname", [("safetensors.torch.save_file", "trainable.safetensors"),
                                          ("torch.save", "state.pt")])
def test_disk_full_on_checkpoint_keeps_earlier_checkpoints(tmp_path, tiny_pipe_dir, monkeypatch, target, fname):
    make_trainer(tmp_path, tiny_pipe_dir, "rwr", max_steps=2, save_every=1, keep_checkpoints=3).train()
    ck = tmp_path / "checkpoints"
    before = {p.name: (p / "trainable.safetensors").read_bytes() for p in ck.glob("step_*")}
    assert sorted(before) == ["step_0000001", "step_0000002"]

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(target, full)
    tr = make_trainer(tmp_path, tiny_pipe_dir, "rwr", max_steps=4, save_every=1, keep_checkpoints=3, resume="auto")
    with pytest.raises(CheckpointWriteError) as e:
        tr.train()
    msg = str(e.value)
    assert e.value.errno == errno.ENOSPC and isinstance(e.value, OSError)
    assert f"writing {ck / '.tmp_step_0000003' / fname} failed (No space left on device)" in msg
    assert "earlier checkpoints are intact (step_0000001, step_0000002" in msg and "resume=auto" in msg
    assert sorted(p.name for p in ck.iterdir()) == ["step_0000001", "step_0000002"]  # no partial directory
    for name, data in before.items():
        assert verify_checkpoint(ck / name) is None and (ck / name / "trainable.safetensors").read_bytes() == data
    monkeypatch.undo()  # space freed: the same command continues from step 2
    make_trainer(tmp_path, tiny_pipe_dir, "rwr", max_steps=4, save_every=1, keep_checkpoints=3, resume="auto").train()
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4]
    assert verify_checkpoint(ck / "step_0000004") is None


def test_disk_full_through_the_cli_exits_2_with_the_message(train_cfg, tmp_path, monkeypatch, capsys):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", full)
    assert main(["train", str(train_cfg)]) == 2
    err = capsys.readouterr().err
    assert "rewardflow: error:" in err and "No space left on device" in err and "earlier checkpoints are intact" in err
