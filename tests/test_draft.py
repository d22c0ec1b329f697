"""DRaFT-K / AlignProp / DRaFT-LV: loss by hand, truncated gradients, refusal of black-box rewards."""

import pytest
import torch

from rewardflow.align.methods.draft import DRaFT, DRaFTConfig
from rewardflow.align.method import MethodContext
from rewardflow.toy.generator import ToyGenerator
from rewardflow.rewards.base import load_reward
from tests.conftest import make_diffusion_gen
from tests.trainer_utils import Brightness, make_trainer, mean_reward

PROMPTS = ["a red circle", "two blue squares"]


def _ctx(gen, reward=None, seed=0, steps=3):
    return MethodContext(generator=gen, reward=reward or Brightness(), rng=torch.Generator().manual_seed(seed),
                         sample_steps=steps)


def test_black_box_reward_refused_at_construction(tiny_pipe_dir):
    gen = ToyGenerator.from_pretrained(tiny_pipe_dir)
    with pytest.raises(ValueError, match="black-box"):
        DRaFT(DRaFTConfig(), _ctx(gen, reward=load_reward("toy_oracle")))
    with pytest.raises(ValueError, match="k must be >= 1"):
        DRaFT(DRaFTConfig(k=0), _ctx(gen))


@pytest.mark.parametrize("kind", ["flow", "epsilon"])
def test_draft_k_loss_is_minus_reward_of_the_plain_pipeline_sample(tiny_pipe_dir, kind):
    gen = make_diffusion_gen(tiny_pipe_dir) if kind == "epsilon" else ToyGenerator.from_pretrained(tiny_pipe_dir)
    gen.add_lora(rank=2, init=False)  # LoRA at zero: the policy is the pipeline
    m = DRaFT(DRaFTConfig(k=1, loss_scale=2.0), _ctx(gen))
    (batch,) = m.collect(PROMPTS, step=0)
    loss, d = m.loss(batch, step=0)
    with torch.no_grad():  # independent sampler: the pipeline's own diffusers loop (scheduler.step)
        img = gen.pipe(PROMPTS, num_inference_steps=3, latents=batch["noise"].clone())
    want = -2.0 * img.flatten(1).mean(1).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-4, abs=1e-6)
    assert d["k"] == 1.0
    loss.backward()
    grads = [p.grad for p in gen.trainable_parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_truncation_only_last_k_steps_carry_gradient(tiny_pipe_dir):
    gen = ToyGenerator.from_pretrained(tiny_pipe_dir)
    gen.add_lora(rank=2)
    calls = []
    orig = gen._forward
    gen._forward = lambda x, t, e: (calls.append(torch.is_grad_enabled()), orig(x, t, e))[1]
    m = DRaFT(DRaFTConfig(k=2, checkpoint=False), _ctx(gen, steps=4))
    (batch,) = m.collect(PROMPTS, step=0)
    m.loss(batch, step=0)
    assert calls == [False, False, True, True]
    calls.clear()
    mr = DRaFT(DRaFTConfig(random_k=True, checkpoint=False), _ctx(gen, steps=4, seed=3))
    ks = {mr.loss(batch, step=0)[1]["k"] for _ in range(8)}
    assert len(ks) > 1 and ks <= {1.0, 2.0, 3.0, 4.0}


def test_draft_lv_loss_by_hand(tiny_pipe_dir):
    gen = ToyGenerator.from_pretrained(tiny_pipe_dir)
    gen.add_lora(rank=2, init=False)
    m = DRaFT(DRaFTConfig(variant="lv", lv_samples=2), _ctx(gen, seed=7))
    (batch,) = m.collect(PROMPTS, step=0)
    rng_copy = torch.Generator().manual_seed(0)
    rng_copy.set_state(m.ctx.rng.get_state())
    loss, _ = m.loss(batch, step=0)
    with torch.no_grad():
        grid = gen.timesteps(3)
        lat = batch["noise"].clone()
        emb = gen.pipe.encode_prompt(PROMPTS)
        for i in range(3):  # Euler ODE, by hand
            lat = lat + (grid[i + 1] - grid[i]) * gen.pipe.denoise(lat, grid[i].expand(2) * 1000, emb)
        x0n = lat.repeat_interleave(2, 0)
        eps = torch.randn(x0n.shape, generator=rng_copy)
        t1 = grid[-2]
        x1 = (1 - t1) * x0n + t1 * eps  # re-noised to the last step's level
        emb2 = {k: v.repeat_interleave(2, 0) for k, v in emb.items()}
        x_new = x1 + (grid[-1] - t1) * gen.pipe.denoise(x1, t1.expand(4) * 1000, emb2)
        want = -gen.pipe.decode_latents(x_new).flatten(1).mean(1).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-4)


def test_a_few_draft_steps_raise_the_reward(tmp_path, tiny_pipe_dir):
    reward = Brightness()
    tr = make_trainer(tmp_path, tiny_pipe_dir, "draft", reward=reward, max_steps=6, batch_size=4, lr=1e-3,
                      lora_rank=0)
    prompts = ["a red circle", "two blue squares", "a green triangle", "a yellow square"] * 2
    before = mean_reward(tr.gen, reward, prompts)
    tr.train()
    assert mean_reward(tr.gen, reward, prompts) > before + 0.03  # measured: 0.4927 -> 0.5579


def test_full_fine_tuning_with_kl_weight_snapshots_the_reference(tmp_path, tiny_pipe_dir):
    # DRaFT needs the reference only when kl_weight > 0: the trainer must still freeze a copy of the initial weights
    tr = make_trainer(tmp_path, tiny_pipe_dir, "draft", lora_rank=0, kl_weight=0.5, max_steps=1, batch_size=1)
    ref = tr.gen._reference
    before = {n: p.detach().clone() for n, p in ref.named_parameters()}
    rec = tr.train_step()
    assert not rec["skipped"] and rec["loss"] == rec["loss"]  # a real step (finite loss)
    assert all(torch.equal(before[n], p) for n, p in ref.named_parameters())  # the reference did not move
    moved = any(not torch.equal(a, b) for a, b in zip(ref.parameters(), tr.gen.denoiser.parameters()))
    assert moved  # while the policy did
