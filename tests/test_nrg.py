"""Flow-NRG (reward guidance during flow sampling), the latent reward model and its BT-with-ties loss."""

import math

import pytest
import torch

from rewardflow.align.inference.nrg import NRG, NRGConfig
from rewardflow.rewards.base import load_reward
from rewardflow.rewards.latent import LatentRewardModel
from rewardflow.rewards.losses import bt_with_ties_loss, bt_with_ties_probs

from conftest import make_diffusion_gen

PROMPTS = ["a red circle", "two blue squares"]


def test_bt_with_ties_loss_hand_computed():
    # k = 5: ln k = 1.6094..., ln(k^2 - 1) = ln 24
    ra, rb = torch.tensor([2.0, 0.0, 1.0, 0.3]), torch.tensor([0.0, 1.0, 1.0, 0.1])
    label = torch.tensor([1, -1, 0, 22])  # A wins, B wins, tie, invalid (masked, VideoAlign's 22)
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    lk = math.log(5)
    want = [-math.log(sig(2 - lk)), -math.log(sig(1 - lk)),
            -math.log(sig(0 - lk)) - math.log(sig(0 - lk)) - math.log(24)]
    per = bt_with_ties_loss(ra, rb, label, reduction="none")
    assert torch.allclose(per[:3], torch.tensor(want), atol=1e-6)
    assert per[3] == 0
    assert math.isclose(bt_with_ties_loss(ra, rb, label).item(), sum(want) / 3, rel_tol=1e-6)
    # the three outcome probabilities sum to one, and the tie loss is -log P(tie)
    p = bt_with_ties_probs(ra, rb)
    assert torch.allclose(p.sum(-1), torch.ones(4), atol=1e-6)
    assert math.isclose(-math.log(p[2, 2].item()), want[2], rel_tol=1e-6)
    with pytest.raises(ValueError, match="k > 1"):
        bt_with_ties_loss(ra, rb, label, k=1.0)


def test_nrg_with_zero_weight_equals_plain_sampling_exactly(flow_gen, tiny_reward_dir):
    reward = load_reward("toy_clip", path=str(tiny_reward_dir))
    noise = flow_gen.initial_noise(2, torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = flow_gen.sample(flow_gen.encode_prompts(PROMPTS), 3, noise=noise).final
    for cfg in (NRGConfig(scale=5.0, weights={"score": 0.0}, steps=3), NRGConfig(scale=0.0, steps=3)):
        guided = NRG(flow_gen, reward, cfg).sample(PROMPTS, noise).final
        assert torch.equal(guided, plain)


def test_nrg_pixel_guidance_is_the_reward_gradient_on_predicted_x0(flow_gen, tiny_reward_dir):
    """One step: v_guided = v - scale * d/dx_t r(decode(x_t - t v)), the gradient not flowing through v."""
    reward = load_reward("toy_clip", path=str(tiny_reward_dir))
    cond = flow_gen.encode_prompts(PROMPTS)
    noise = flow_gen.initial_noise(2, torch.Generator().manual_seed(2))
    scale = 3.0
    got = NRG(flow_gen, reward, NRGConfig(scale=scale, steps=1)).sample(PROMPTS, noise).final
    t = float(flow_gen.timesteps(1)[0])
    t_next = float(flow_gen.timesteps(1)[1])
    with torch.no_grad():
        v = flow_gen.predict(noise, t, cond)
    x = noise.clone().requires_grad_(True)
    r = reward(flow_gen.decode(x - t * v), PROMPTS).sum()
    (g,) = torch.autograd.grad(r, x)
    want = noise + (t_next - t) * (v - scale * g)
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, noise + (t_next - t) * v, atol=1e-4)


def test_nrg_raises_reward_on_average(flow_gen, tiny_reward_dir):
    reward = load_reward("toy_clip", path=str(tiny_reward_dir))
    prompts = PROMPTS * 4
    noise = flow_gen.initial_noise(len(prompts), torch.Generator().manual_seed(3))
    with torch.no_grad():
        base = reward(flow_gen.decode(flow_gen.sample(flow_gen.encode_prompts(prompts), 4, noise=noise).final),
                      prompts)
        guided = reward(NRG(flow_gen, reward, NRGConfig(scale=50.0, steps=4)).generate(prompts, noise), prompts)
    assert guided.mean() > base.mean()


def test_nrg_refuses_non_flow_and_unknown_heads(tiny_pipe_dir, flow_gen, tiny_reward_dir):
    reward = load_reward("toy_clip", path=str(tiny_reward_dir))
    with pytest.raises(ValueError, match="flow"):
        NRG(make_diffusion_gen(tiny_pipe_dir), reward)
    with pytest.raises(ValueError, match="unknown reward heads"):
        NRG(flow_gen, reward, NRGConfig(weights={"VQ": 1.0}))
    with pytest.raises(ValueError, match="black-box"):
        NRG(flow_gen, load_reward("toy_oracle"))


def test_latent_reward_model_gradient_save_load_and_guidance(flow_gen, tmp_path):
    lrm = LatentRewardModel(flow_gen, n_blocks=1, heads=("VQ", "TA"), hidden=16)
    cond = flow_gen.encode_prompts(PROMPTS)
    x = flow_gen.initial_noise(2, torch.Generator().manual_seed(4)).requires_grad_(True)
    heads = lrm.score_heads(x, 0.7, cond)
    assert set(heads) == {"VQ", "TA"} and heads["VQ"].shape == (2,)
    heads["VQ"].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # reaches the noisy latent through the backbone blocks
    # only the head is trainable / saved; the backbone is the generator's, not a submodule
    assert all(n.startswith("head.") for n, _ in lrm.named_parameters())
    lrm.save_pretrained(tmp_path / "lrm")
    again = LatentRewardModel.from_pretrained(flow_gen, tmp_path / "lrm")
    with torch.no_grad():
        assert torch.allclose(again(x, 0.7, cond), lrm(x, 0.7, cond))
    # per-head weights: weight 0 on every head is plain sampling, a non-zero weight changes the sample
    noise = flow_gen.initial_noise(2, torch.Generator().manual_seed(5))
    with torch.no_grad():
        plain = flow_gen.sample(cond, 2, noise=noise).final
    off = NRG(flow_gen, lrm, NRGConfig(scale=1.0, weights={"VQ": 0.0, "TA": 0.0}, steps=2), source="latent")
    on = NRG(flow_gen, lrm, NRGConfig(scale=1.0, weights={"VQ": 1.0, "TA": 0.5}, steps=2), source="latent")
    assert torch.equal(off.sample(PROMPTS, noise).final, plain)
    assert not torch.allclose(on.sample(PROMPTS, noise).final, plain)
    with pytest.raises(FileNotFoundError, match="head.safetensors"):
        (tmp_path / "lrm" / "head.safetensors").unlink()
        LatentRewardModel.from_pretrained(flow_gen, tmp_path / "lrm")


def test_latent_reward_method_learns_judge_preferences(flow_gen):
    """The BT-with-ties head fits the judge's pair labels (toy_clip as judge on a fixed collected batch)."""
    from rewardflow.align.methods.latent_reward import LatentRewardConfig, LatentRewardMethod
    from rewardflow.align.method import MethodContext

    ctx = MethodContext(generator=flow_gen, reward=None, rng=torch.Generator().manual_seed(0), sample_steps=2)
    m = LatentRewardMethod(LatentRewardConfig(judge="toy_clip", hidden=32, t_per_pair=2), ctx)
    assert flow_gen.trainable_parameters() == []  # the generator stays frozen
    batch = m.collect(["a red circle", "two blue squares", "a green triangle", "three red squares"], step=0)[0]
    assert set(batch["label"].tolist()) <= {-1, 1}
    opt = torch.optim.Adam(m.trainable_module().parameters(), lr=1e-2)
    losses = []
    for step in range(60):
        ctx.rng.manual_seed(123)  # same t and noise each step: a pure fitting check
        loss, metrics = m.loss(batch, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    assert metrics["pair_accuracy"] == 1.0
