"""ReNO and best-of-N."""

import math

import pytest
import torch

from rewardflow.align.inference.best_of_n import best_of_n
from rewardflow.align.inference.reno import ReNO, ReNOConfig, chi_norm_reg
from rewardflow.rewards.base import Reward, load_reward

PROMPTS = ["a red circle", "two blue squares"]


def test_chi_norm_reg_is_negative_chi_log_density():
    d = 48
    eps = torch.randn(3, 3, 4, 4)
    r = eps.flatten(1).norm(dim=1).double()
    log_chi = (d - 1) * torch.log(r) - r**2 / 2 - (d / 2 - 1) * math.log(2) - math.lgamma(d / 2)
    reg = chi_norm_reg(eps).double()
    # equal up to the normalising constant
    const = reg + log_chi
    assert torch.allclose(const, const[0].expand(3), atol=1e-6)
    # minimum at the mode of the chi distribution, r = sqrt(d - 1)
    for s in (0.9, 1.1):
        x = torch.ones(1, d) * math.sqrt((d - 1) / d)
        assert chi_norm_reg(x) < chi_norm_reg(x * s)


def test_reno_gradient_reaches_noise(flow_gen, tiny_reward_dir):
    reward = load_reward("toy_clip", path=str(tiny_reward_dir))
    cond = flow_gen.encode_prompts(PROMPTS)
    eps = flow_gen.initial_noise(2).requires_grad_(True)
    img = flow_gen.decode(flow_gen.sample(cond, 2, noise=eps, grad="all").final)
    reward(img, PROMPTS).sum().backward()
    assert eps.grad is not None and eps.grad.abs().sum() > 0


def test_reno_raises_reward_and_returns_best_iterate(flow_gen, tiny_reward_dir):
    reward = load_reward("toy_clip", path=str(tiny_reward_dir))
    res = ReNO(flow_gen, reward, ReNOConfig(iterations=6, steps=2, lr=5.0, optimizer="sgd")).optimize(PROMPTS)
    assert len(res.curve) == 6
    curve = torch.tensor(res.curve)  # [iters, B]
    assert torch.allclose(res.best_reward, curve.max(0).values)
    assert torch.equal(res.best_iteration, curve.argmax(0))
    assert (res.best_reward > res.initial_reward).all()
    # the returned image is the one the best noise generates
    with torch.no_grad():
        again = flow_gen.decode(flow_gen.sample(flow_gen.encode_prompts(PROMPTS), 2, noise=res.noise).final)
        assert torch.allclose(reward(again, PROMPTS), res.best_reward, atol=1e-5)


class _Scripted(Reward):
    """A differentiable reward whose value per call follows a script: best at the 2nd evaluation."""

    name = "scripted"

    def __init__(self, values):
        super().__init__()
        self.values, self.calls = values, 0

    def score(self, media, prompts):
        v = self.values[min(self.calls, len(self.values) - 1)]
        self.calls += 1
        return media.mean((1, 2, 3)) * 0 + v


def test_reno_keeps_best_iterate_even_if_later_iterates_are_worse(flow_gen):
    res = ReNO(flow_gen, _Scripted([0.5, 0.9, 0.2, 0.1]), ReNOConfig(iterations=4, steps=1)).optimize(PROMPTS)
    assert res.best_iteration.tolist() == [1, 1]
    assert torch.allclose(res.best_reward, torch.tensor([0.9, 0.9]))
    assert torch.allclose(res.initial_reward, torch.tensor([0.5, 0.5]))


def test_reno_refuses_black_box_reward(flow_gen):
    with pytest.raises(ValueError, match="black-box"):
        ReNO(flow_gen, load_reward("toy_oracle"))
    with pytest.raises(ValueError, match="optimizer"):
        ReNO(flow_gen, _Scripted([0.0]), ReNOConfig(optimizer="lbfgs2"))


class _Pick(Reward):
    """Scores by mean brightness (differentiable, deterministic)."""

    name = "bright"

    def score(self, media, prompts):
        return media.mean((1, 2, 3))


def test_best_of_n_picks_the_argmax(flow_gen):
    noise = torch.randn(2, 3, *flow_gen.latent_shape)
    res = best_of_n(flow_gen, _Pick(), PROMPTS, 3, steps=2, noise=noise)
    assert torch.equal(res.scores, res.all_scores.max(1).values)
    # recompute each candidate by hand
    for i, p in enumerate(PROMPTS):
        imgs = flow_gen.generate([p] * 3, 2, noise=noise[i])
        s = imgs.mean((1, 2, 3))
        assert torch.allclose(res.all_scores[i], s, atol=1e-6)
        assert torch.equal(res.noise[i], noise[i, int(s.argmax())])
    with pytest.raises(ValueError, match="noise must be"):
        best_of_n(flow_gen, _Pick(), PROMPTS, 2, steps=2, noise=noise)
