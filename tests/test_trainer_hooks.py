"""Trainer hooks beyond the generator methods: a method that trains its own module (the latent reward model for
Flow-NRG), held-out rewards with the reward-hacking monitor, the sample counter under rollout reuse; and the
`demo --video` entry point."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from trainer_utils import make_trainer


def test_latent_reward_trains_only_its_head_and_saves_a_loadable_model(tmp_path, tiny_pipe_dir):
    from rewardflow.toy.generator import ToyGenerator
    from rewardflow.rewards.latent import LatentRewardModel

    gen = ToyGenerator.from_pretrained(tiny_pipe_dir, guidance_scale=1.0)
    before = {k: v.clone() for k, v in gen.denoiser.state_dict().items()}
    tr = make_trainer(tmp_path, tiny_pipe_dir, "latent_reward", generator=gen, reward=None, batch_size=4,
                      max_steps=3, lora_rank=8, eval_prompts="toy:heldout", eval_per_category=2,
                      judge="toy_clip", hidden=16, t_per_pair=2)
    assert tr.params_before == sum(p.numel() for p in tr.method.lrm.head.parameters())
    assert not any(p.requires_grad for p in gen.denoiser.parameters())  # no LoRA, nothing unfrozen
    head_before = [p.detach().clone() for p in tr.method.lrm.head.parameters()]
    summary = tr.train()
    # the generator is untouched, the head moved
    after = gen.denoiser.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(a, b) for a, b in zip(head_before, tr.method.lrm.head.parameters()))
    # evaluation reports the head's held-out pair accuracy, not a generator reward
    assert 0.0 <= summary["after"]["eval_pair_accuracy"] <= 1.0 and "eval_reward" not in summary["after"]
    # final/ holds the head, loadable through the real loader, scoring identically
    lrm = LatentRewardModel.from_pretrained(gen, tmp_path / "final")
    x, t = torch.randn(2, *gen.latent_shape), torch.tensor([0.3, 0.7])
    cond = gen.encode_prompts(["a red circle", "a blue square"])
    torch.testing.assert_close(lrm(x, t, cond), tr.method.lrm(x, t, cond))
    assert json.loads((tmp_path / "final" / "latent_reward.json").read_text())["nrg_scale"] == 1.0


def test_heldout_rewards_are_scored_and_watched(tmp_path, tiny_pipe_dir):
    tr = make_trainer(tmp_path, tiny_pipe_dir, "draft", eval_prompts="toy:heldout", eval_per_category=1,
                      heldout_rewards=["toy_clip"], max_steps=1, eval_at_start=True)
    summary = tr.train()
    for when in ("before", "after"):
        assert "heldout_toy_clip" in summary[when] and "eval_reward" in summary[when]
        assert summary[when]["hacking_warnings"] >= 0
    assert tr.monitor is not None and tr.monitor.held_out == ["heldout_toy_clip"]


def test_rollout_reuse_counts_only_new_samples(tmp_path, tiny_pipe_dir):
    tr = make_trainer(tmp_path, tiny_pipe_dir, "grpo", max_steps=4, group_size=2, updates_per_rollout=2)
    tr.train()
    # 4 optimizer steps on 2 rollouts of batch 2 x group 2
    assert tr.samples_seen == 2 * 2 * 2


def test_heldout_rewards_accept_a_single_name_on_the_command_line():
    from rewardflow.align.trainer import load_train_config

    tcfg, _ = load_train_config(None, ["method=draft", "heldout_rewards=toy_clip"])
    assert tcfg.heldout_rewards == ("toy_clip",)
    tcfg, _ = load_train_config(None, ["method=draft", "heldout_rewards=toy_clip, segmental(toy_video,k=2)"])
    assert tcfg.heldout_rewards == ("toy_clip", "segmental(toy_video,k=2)")
    tcfg, _ = load_train_config(None, ["method=draft", "heldout_rewards=[toy_clip, jpeg_compressibility]"])
    assert tcfg.heldout_rewards == ("toy_clip", "jpeg_compressibility")


def test_demo_video_runs_and_writes_a_summary(tmp_path):
    r = subprocess.run([sys.executable, "-m", "rewardflow", "demo", "--video", "--out", str(tmp_path),
                        "iterations=2", "n_candidates=2"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    files = {p.name for p in tmp_path.iterdir()}
    summary = json.loads((tmp_path / "summary.json").read_text()) if "summary.json" in files else None
    assert summary is not None, files
    text = json.dumps(summary)
    assert "reno" in text and "best_of_n" in text


def test_load_generator_by_embedded_adapter_name():
    from rewardflow.pipelines.registry import load_generator

    g = load_generator("toy_video")
    assert type(g).__name__ == "ToyVideoGenerator" and g.modality == "video" and g.num_frames >= 2
