"""Training the toy weights (a few steps, tiny batch): losses fall, files land in the official formats, and the
trained artefacts load back through the library's loaders."""

import json

import numpy as np
import torch

from rewardflow.toy import world
from rewardflow.toy.train import caption_true, train_generator, train_reward


def test_caption_true_semantics():
    lay = [world.Obj("red", "circle", "top left"), world.Obj("blue", "square", "bottom right")]
    assert caption_true(lay, world.parse_caption("a red circle and a blue square"))
    assert caption_true(lay, world.parse_caption("a blue square at the bottom right and a red circle at the top left"))
    assert not caption_true(lay, world.parse_caption("a blue circle and a red square"))
    assert not caption_true(lay, world.parse_caption("a red circle"))


def test_train_generator_writes_a_loadable_pipeline(tmp_path):
    meta = train_generator(tmp_path / "g", steps=4, batch=8, log_every=1)
    assert (tmp_path / "g" / "model_index.json").exists()
    assert (tmp_path / "g" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert json.loads((tmp_path / "g" / "training.json").read_text())["steps"] == 4
    assert all(np.isfinite(r["loss"]) for r in meta["log"])
    from rewardflow.toy.generator import ToyGenerator

    gen = ToyGenerator.from_pretrained(tmp_path / "g")
    assert gen.dtype == torch.float32 and gen.parametrization == "flow"
    img = gen.generate(["a red circle"], 2)
    assert img.shape == (1, 3, 32, 32)


def test_train_reward_loss_falls_and_loads(tmp_path):
    meta = train_reward(tmp_path / "r", steps=12, batch=16, log_every=1, adv_eps=0.03)
    losses = [r["loss"] for r in meta["log"]]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    from rewardflow.rewards.base import load_reward

    r = load_reward("toy_clip", path=str(tmp_path / "r"))
    assert r(torch.rand(2, 3, 32, 32), ["a red circle", "two blue squares"]).shape == (2,)


def test_non_finite_loss_never_touches_weights():
    from rewardflow.toy.train import _optim_step

    lin = torch.nn.Linear(2, 1)
    before = [p.detach().clone() for p in lin.parameters()]
    opt = torch.optim.AdamW(lin.parameters(), lr=0.1)
    assert not _optim_step(opt, lin(torch.tensor([[float("nan"), 1.0]])).sum(), 0.1)
    assert not _optim_step(opt, (lin.weight * float("inf")).sum(), 0.1)
    assert all(torch.equal(a, b) for a, b in zip(before, lin.parameters()))
    assert _optim_step(opt, lin(torch.ones(1, 2)).sum(), 0.1)
    assert not torch.equal(before[0], lin.weight)
