"""The Reward interface, registry, toy rewards and WeightedReward."""

import numpy as np
import pytest
import torch

from rewardflow.rewards.base import Reward, list_rewards, load_reward, require_differentiable
from rewardflow.rewards.combine import WeightedReward
from rewardflow.toy import world


def test_registry_lists_and_rejects_unknown():
    names = list_rewards()
    assert {"toy_clip", "toy_clip_adv", "toy_oracle"} <= set(names)
    with pytest.raises(KeyError) as e:
        load_reward("toy_clipp")
    msg = str(e.value)
    assert "unknown reward 'toy_clipp'" in msg and "Did you mean 'toy_clip'" in msg and "toy_oracle" in msg


def test_toy_clip_gradient_reaches_pixels_and_matches_finite_difference(tiny_reward_dir):
    r = load_reward("toy_clip", path=str(tiny_reward_dir))
    assert r.differentiable and r.modality == "image"
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64).float().requires_grad_(True)
    prompts = ["a red circle", "two blue squares"]
    s = r(x, prompts)
    assert s.shape == (2,) and s.dtype == torch.float32 and (s.abs() <= 1 + 1e-5).all()
    s.sum().backward()
    g = x.grad
    assert g.abs().sum() > 0
    # central finite difference along the gradient direction
    d = g / g.norm()
    h = 1e-2
    with torch.no_grad():
        fd = (r(x + h * d, prompts).sum() - r(x - h * d, prompts).sum()) / (2 * h)
    assert abs(float(fd) - float(g.norm())) / float(g.norm()) < 0.05


def test_toy_clip_equals_cosine_formula(tiny_reward_dir):
    r = load_reward("toy_clip", path=str(tiny_reward_dir))
    x = torch.rand(3, 3, 32, 32)
    prompts = ["a red circle", "a blue square", "two green triangles"]
    ids = r._tokens(prompts)
    ie, te = r.model.encode_image(x), r.model.encode_text(ids)
    want = torch.nn.functional.cosine_similarity(ie, te, dim=-1)
    assert torch.allclose(r(x, prompts), want, atol=1e-6)


def test_reward_input_validation(tiny_reward_dir):
    r = load_reward("toy_clip", path=str(tiny_reward_dir))
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        r(torch.full((1, 3, 32, 32), -1.0), ["a red circle"])
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        r(torch.rand(1, 4, 3, 32, 32), ["a red circle"])
    with pytest.raises(ValueError, match="1 media but 2 prompts"):
        r(torch.rand(1, 3, 32, 32), ["a", "b"])
    with pytest.raises(TypeError, match="float tensor"):
        r(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), ["a red circle"])
    with pytest.raises(FileNotFoundError, match="train-reward"):
        load_reward("toy_clip", path="/nonexistent/reward")


def test_oracle_reward_is_black_box_and_exact():
    r = load_reward("toy_oracle")
    assert not r.differentiable and r.heads == ("score", "pass")
    rng = np.random.default_rng(0)
    scenes = world.sample_scenes(rng, 6)
    imgs = torch.from_numpy(world.render_batch(scenes, rng=rng)).permute(0, 3, 1, 2).float() / 255
    heads = r.all_heads(imgs, [s.caption for s in scenes])
    assert torch.equal(heads["pass"], torch.ones(6))
    wrong = [world.hard_negative(s, rng).caption for s in scenes]
    assert r.all_heads(imgs, wrong)["pass"].sum() == 0
    x = imgs.clone().requires_grad_(True)
    assert not r(x, [s.caption for s in scenes]).requires_grad
    with pytest.raises(ValueError, match="black-box"):
        require_differentiable(r, "ReNO")


class _Const(Reward):
    def __init__(self, name, scale):
        super().__init__()
        self.name, self.scale = name, scale

    def score(self, media, prompts):
        return media.mean((1, 2, 3)) * self.scale


def test_weighted_reward_sum_and_normalization():
    a, b = _Const("a", 1.0), _Const("b", 10.0)
    x = torch.rand(4, 3, 8, 8)
    m = x.mean((1, 2, 3))
    w = WeightedReward([a, b], [2.0, 0.5])
    assert torch.allclose(w(x, ["p"] * 4), 2 * m + 0.5 * 10 * m)
    assert set(w.last_components) == {"a#0", "b#1"}
    wn = WeightedReward([a, b], [1.0, 1.0], stats=[(0.5, 0.1), (5.0, 1.0)])
    assert torch.allclose(wn(x, ["p"] * 4), (m - 0.5) / 0.1 + (10 * m - 5.0) / 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="one weight per reward"):
        WeightedReward([a, b], [1.0])
