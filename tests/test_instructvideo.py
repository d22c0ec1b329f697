"""InstructVideo (rewardflow/align/methods/instructvideo.py): loss 1 - R by hand, gradients through the last K steps only,
frame-subset reward equal to the full-decode reward, a few steps raise the reward, black-box rewards refused."""

import math

import pytest
import torch

FRAMES = 4
PROMPTS = ["a red circle moving left", "a blue square moving up"]


@pytest.fixture(scope="module")
def tiny_video_dir(tmp_path_factory):
    from rewardflow.toy.video_pipeline import ToyVideoFlowPipeline

    d = tmp_path_factory.mktemp("toy_video_pipe_iv")
    ToyVideoFlowPipeline.from_config_dict(frames=FRAMES, width=32, channels=(16, 32, 32), seed=0).save_pretrained(str(d))
    return d


def _make(tiny_video_dir, tiny_reward_dir, reward=None, seed=0, **cfg):
    from rewardflow.align.methods.instructvideo import InstructVideo, InstructVideoConfig
    from rewardflow.align.method import MethodContext
    from rewardflow.toy.video_generator import ToyVideoGenerator
    from rewardflow.rewards.base import load_reward

    gen = ToyVideoGenerator.from_pretrained(tiny_video_dir)
    if reward is None:
        reward = load_reward("segmental(toy_clip)", selection="first", inner_kwargs={"path": str(tiny_reward_dir)})
    ctx = MethodContext(generator=gen, reward=reward, rng=torch.Generator().manual_seed(seed), sample_steps=5,
                        batch_size=2)
    return InstructVideo(InstructVideoConfig(**cfg), ctx)


def _hand_reward(gen, image_reward, latents, prompts, frames, lam=1.0):
    """SegVR + TAR by hand: frames (selection 'first', 4 segments of 4 -> 0,1,2,3), gamma = exp(-|f - F//2|)."""
    video = gen.decode(latents)
    idx = [0, 1, 2, 3]
    gam = [math.exp(-lam * abs(f - frames // 2)) for f in idx]
    per = [image_reward(video[:, f], prompts) for f in idx]
    return sum(g * r for g, r in zip(gam, per)) / len(idx)


def test_loss_is_one_minus_segmental_reward_by_hand(tiny_video_dir, tiny_reward_dir):
    m = _make(tiny_video_dir, tiny_reward_dir, source="toy", offset_noise=0.0)
    gen = m.ctx.generator
    batch = m.collect(PROMPTS, 0)[0]
    assert batch["x0"].shape == (2, *gen.latent_shape) and batch["noise"].shape == batch["x0"].shape
    loss, diag = m.loss(batch, 0)
    # editing mode by hand: t0 = 0.6 of 5 steps -> start at grid index 2, noised with the forward process
    grid = gen.timesteps(5)
    x = (1 - grid[2]) * batch["x0"] + grid[2] * batch["noise"]
    cond = gen.encode_prompts(PROMPTS)
    with torch.no_grad():
        for i in range(2, 5):
            x = x + (grid[i + 1] - grid[i]) * gen.predict(x, grid[i], cond)
        r = _hand_reward(gen, m.ctx.reward.image_reward, x, PROMPTS, FRAMES)
    torch.testing.assert_close(loss.detach(), (1 - r).mean(), atol=1e-5, rtol=0)
    assert diag["edit_steps"] == 3 and diag["k"] == 1


def test_frame_subset_reward_equals_full_decode_reward(tiny_video_dir, tiny_reward_dir):
    from rewardflow.align.methods.instructvideo import segmental_subset_reward
    from rewardflow.rewards.base import load_reward

    m = _make(tiny_video_dir, tiny_reward_dir)
    gen = m.ctx.generator
    lat = torch.randn(2, *gen.latent_shape)
    for normalize in (False, True):
        rw = load_reward("segmental(toy_clip)", selection="tsn", seed=5, normalize=normalize,
                         inner_kwargs={"path": str(tiny_reward_dir)})
        sub = segmental_subset_reward(gen, lat, PROMPTS, rw, FRAMES)
        rw.generator.manual_seed(5)  # the same TSN draw
        torch.testing.assert_close(sub, rw(gen.decode(lat), PROMPTS), atol=1e-6, rtol=0)


def _grads(m, batch):
    m.ctx.generator.denoiser.zero_grad(set_to_none=True)
    loss, _ = m.loss(batch, 0)
    loss.backward()
    return {n: p.grad.clone() for n, p in m.ctx.generator.denoiser.named_parameters() if p.grad is not None}


def test_gradients_flow_through_the_last_k_steps_only(tiny_video_dir, tiny_reward_dir):
    m = _make(tiny_video_dir, tiny_reward_dir, source="toy", k=1, offset_noise=0.0)
    gen = m.ctx.generator
    gen.denoiser.requires_grad_(True)
    batch = m.collect(PROMPTS, 0)[0]
    g1 = _grads(m, batch)
    assert g1 and any(v.abs().sum() > 0 for v in g1.values())
    # reference: the same chain with no graph up to the last step's input, then one step with gradients
    traj = gen.sample(gen.encode_prompts(PROMPTS), 5, noise=batch["noise"], x0=batch["x0"], t0=0.6)
    x_in, t, t_next = traj.latents[-2], traj.timesteps[-2], traj.timesteps[-1]
    gen.denoiser.zero_grad(set_to_none=True)
    out = gen.predict(x_in, t, gen.encode_prompts(PROMPTS))
    x = gen.step(out, x_in, t, t_next).prev_sample
    (1 - _hand_reward(gen, m.ctx.reward.image_reward, x, PROMPTS, FRAMES)).mean().backward()
    for n, p in gen.denoiser.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(g1[n], p.grad, atol=1e-6, rtol=1e-4)
    # K = 2 backpropagates through one more step: a different gradient
    m.config.k = 2
    g2 = _grads(m, batch)
    assert max((g2[n] - g1[n]).abs().max().item() for n in g1) > 1e-6


def test_a_few_steps_raise_the_reward(tiny_video_dir, tiny_reward_dir):
    m = _make(tiny_video_dir, tiny_reward_dir, source="toy", seed=1)
    gen = m.ctx.generator
    gen.denoiser.requires_grad_(True)
    batch = m.collect(PROMPTS, 0)[0]
    opt = torch.optim.Adam(gen.denoiser.parameters(), lr=2e-3)
    losses = []
    for step in range(4):
        opt.zero_grad()
        loss, diag = m.loss(batch, step)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        assert diag["reward_mean"] == pytest.approx(1 - loss.item(), abs=1e-5)
    with torch.no_grad():
        final = m.loss(batch, 4)[0].item()
    assert final < losses[0] - 1e-3, (losses, final)


def test_refuses_black_box_and_image_rewards(tiny_video_dir, tiny_reward_dir):
    from rewardflow.rewards.base import load_reward

    with pytest.raises(ValueError, match="black-box"):
        _make(tiny_video_dir, tiny_reward_dir, reward=load_reward("toy_video_oracle"))
    with pytest.raises(ValueError, match=r"segmental\(toy_clip\)"):
        _make(tiny_video_dir, tiny_reward_dir, reward=load_reward("toy_clip", path=str(tiny_reward_dir)))
    with pytest.raises(ValueError, match="t0 must be in"):
        _make(tiny_video_dir, tiny_reward_dir, t0=0.0)
    with pytest.raises(ValueError, match="source must be 'sample' or a registered media source"):
        _make(tiny_video_dir, tiny_reward_dir, source="webvid")


def test_sample_source_and_offset_noise(tiny_video_dir, tiny_reward_dir):
    m = _make(tiny_video_dir, tiny_reward_dir, source="sample", offset_noise=0.5)
    batch = m.collect(PROMPTS, 0)[0]
    assert batch["x0"].shape == (2, *m.ctx.generator.latent_shape)
    # the offset component is constant over the spatial axes: per-(frame, channel) means move away from 0
    per_map = batch["noise"].mean(dim=(-2, -1))
    assert per_map.std() > 0.3
    m2 = _make(tiny_video_dir, tiny_reward_dir, source="sample", offset_noise=0.0)
    assert m2.collect(PROMPTS, 0)[0]["noise"].mean(dim=(-2, -1)).std() < 0.15


def test_registered_and_config_runs_through_the_trainer_split():
    from rewardflow.align.method import get_method
    from rewardflow.align.methods.instructvideo import InstructVideoConfig

    cls = get_method("instructvideo")
    assert cls.config_class is InstructVideoConfig and cls.needs_reward_grad
    c = InstructVideoConfig()
    assert (c.t0, c.k, c.offset_noise) == (0.6, 1, 0.1)
