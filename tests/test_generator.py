"""The Generator interface: parametrizations, sampler steps, log-probs, truncated gradients, reference, LoRA."""

import math

import pytest
import torch
from conftest import make_diffusion_gen

from rewardflow.pipelines.parametrization import gaussian_log_prob

PROMPTS = ["a red circle", "two blue squares"]


def _alpha_bar(t):
    # SD's scaled-linear schedule, by hand
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)[t]


def test_noisy_target_flow_hand_computed(flow_gen):
    x0 = torch.full((1, 2), 2.0)
    noise = torch.full((1, 2), -1.0)
    t = torch.tensor([0.25])
    assert torch.allclose(flow_gen.noisy(x0, noise, t), torch.full((1, 2), 0.75 * 2 - 0.25))
    assert torch.allclose(flow_gen.target(x0, noise, t), torch.full((1, 2), -3.0))


@pytest.mark.parametrize("ptype", ["epsilon", "v_prediction"])
def test_noisy_target_diffusion_hand_computed(tiny_pipe_dir, ptype):
    gen = make_diffusion_gen(tiny_pipe_dir, ptype)
    assert gen.parametrization == ptype
    x0 = torch.tensor([[2.0, -1.0]])
    noise = torch.tensor([[0.5, 3.0]])
    t = torch.tensor([499])
    ab = float(_alpha_bar(499))
    want_xt = torch.tensor([[math.sqrt(ab) * 2 + math.sqrt(1 - ab) * 0.5, -math.sqrt(ab) + math.sqrt(1 - ab) * 3]])
    assert torch.allclose(gen.noisy(x0, noise, t), want_xt, atol=1e-5)
    tgt = gen.target(x0, noise, t)
    if ptype == "epsilon":
        assert torch.equal(tgt, noise)
    else:
        want_v = math.sqrt(ab) * noise - math.sqrt(1 - ab) * x0
        assert torch.allclose(tgt, want_v, atol=1e-5)


@pytest.mark.parametrize("ptype", ["flow", "epsilon", "v_prediction"])
def test_convert_inverts_target(tiny_pipe_dir, flow_gen, ptype):
    gen = flow_gen if ptype == "flow" else make_diffusion_gen(tiny_pipe_dir, ptype)
    x0, noise = torch.randn(3, 4), torch.randn(3, 4)
    t = torch.tensor([0.3, 0.6, 0.9]) if ptype == "flow" else torch.tensor([10, 500, 990])
    xt = gen.noisy(x0, noise, t)
    x0_hat, eps_hat = gen.convert(gen.target(x0, noise, t), xt, t)
    assert torch.allclose(x0_hat, x0, atol=1e-4) and torch.allclose(eps_hat, noise, atol=1e-4)


def test_unknown_parametrization_errors(flow_gen):
    flow_gen.parametrization = "x0"
    with pytest.raises(ValueError, match="unknown parametrization 'x0'"):
        flow_gen.noisy(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1))


def test_gaussian_log_prob_matches_torch_normal():
    x, mu = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    want = torch.distributions.Normal(mu, 0.3).log_prob(x).flatten(1).mean(1)
    assert torch.allclose(gaussian_log_prob(x, mu, torch.tensor(0.3)), want, atol=1e-6)


def test_ode_sample_equals_pipeline_output(flow_gen):
    noise = flow_gen.initial_noise(2, torch.Generator().manual_seed(1))
    for g in (1.0, 3.0):
        flow_gen.guidance_scale = g
        ours = flow_gen.decode(flow_gen.sample(flow_gen.encode_prompts(PROMPTS), 5, noise=noise).final)
        ref = flow_gen.pipe(PROMPTS, num_inference_steps=5, guidance_scale=g, latents=noise)
        assert torch.allclose(ours, ref, atol=1e-6), g


def test_ddim_ode_equals_diffusers_scheduler(tiny_pipe_dir):
    gen = make_diffusion_gen(tiny_pipe_dir, "epsilon")
    noise = gen.initial_noise(2, torch.Generator().manual_seed(1))
    ours = gen.decode(gen.sample(gen.encode_prompts(PROMPTS), 6, noise=noise).final)
    ref = gen.pipe(PROMPTS, num_inference_steps=6, latents=noise)
    assert torch.allclose(ours, ref, atol=1e-5)


@pytest.mark.parametrize("ptype", ["flow", "epsilon"])
def test_sde_with_zero_noise_equals_ode(tiny_pipe_dir, flow_gen, ptype):
    gen = flow_gen if ptype == "flow" else make_diffusion_gen(tiny_pipe_dir, ptype)
    cond = gen.encode_prompts(PROMPTS)
    noise = gen.initial_noise(2, torch.Generator().manual_seed(0))
    ode = gen.sample(cond, 4, noise=noise)
    sde0 = gen.sample(cond, 4, noise=noise, sde=True, noise_level=0.0)
    assert torch.equal(ode.final, sde0.final) and sde0.log_probs is None
    # and the stochastic step's mean tends to the ODE step as the noise level goes to 0
    x, t, tn = ode.latents[1], float(ode.timesteps[1]), float(ode.timesteps[2])
    out = gen.predict(x, t, cond)
    small = gen.step(out, x, t, tn, noise_level=1e-4)
    assert torch.allclose(small.mean, ode.latents[2].float(), atol=1e-6)


@pytest.mark.parametrize("ptype", ["flow", "epsilon", "v_prediction"])
def test_recomputed_log_prob_equals_recorded(tiny_pipe_dir, flow_gen, ptype):
    gen = flow_gen if ptype == "flow" else make_diffusion_gen(tiny_pipe_dir, ptype, guidance_scale=2.0)
    cond = gen.encode_prompts(PROMPTS)
    traj = gen.sample(cond, 4, sde=True, generator=torch.Generator().manual_seed(3))
    assert traj.log_probs.shape == (2, 4) and traj.log_probs.dtype == torch.float32
    level = 0.7 if ptype == "flow" else 1.0
    smax = float(traj.timesteps[1]) if ptype == "flow" else None
    for i in range(4):
        lp = gen.log_prob(traj.latents[i], traj.latents[i + 1], traj.timesteps[i], traj.timesteps[i + 1], cond,
                          noise_level=level, sigma_max=smax)
        ratio = torch.exp(lp - traj.log_probs[:, i])
        assert torch.equal(ratio, torch.ones(2)), (i, ratio)


def test_flow_grpo_sde_step_formula(flow_gen):
    """One SDE step by hand (docs/algorithms.md#flow-grpo-sde) at sigma=0.5 -> 0.25, a = 0.7."""
    x, v = torch.randn(1, 12, 4, 4), torch.randn(1, 12, 4, 4)
    s, d, a = 0.5, 0.25, 0.7
    st = a * math.sqrt(s / (1 - s))
    mean = x * (1 - st**2 * d / (2 * s)) - v * d * (1 + st**2 * (1 - s) / (2 * s))
    z = torch.randn_like(x)
    nxt = mean + st * math.sqrt(d) * z
    res = flow_gen.step(v, x, s, s - d, noise_level=a, prev_sample=nxt)
    assert torch.allclose(res.mean, mean, atol=1e-6)
    assert math.isclose(float(res.std), st * math.sqrt(d), rel_tol=1e-6)
    want = torch.distributions.Normal(mean, st * math.sqrt(d)).log_prob(nxt).mean()
    assert torch.allclose(res.log_prob, want.unsqueeze(0), atol=1e-5)


def test_log_prob_refuses_ode_step(flow_gen):
    cond = flow_gen.encode_prompts(PROMPTS)
    x = flow_gen.initial_noise(2)
    with pytest.raises(ValueError, match="noise_level must be > 0"):
        flow_gen.log_prob(x, x, 1.0, 0.5, cond, noise_level=0.0)


def _lora_grads(gen, loss):
    gen.denoiser.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in gen.denoiser.named_parameters() if p.requires_grad}


def test_gradients_only_through_last_k_steps(flow_gen):
    gen = flow_gen
    gen.add_lora(rank=2, init="gaussian")
    with torch.no_grad():  # make the adapters matter
        for n, p in gen.denoiser.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    assert all("lora" in n for n, p in gen.denoiser.named_parameters() if p.requires_grad)
    cond = gen.encode_prompts(PROMPTS)
    noise = gen.initial_noise(2, torch.Generator().manual_seed(0))
    traj = gen.sample(cond, 4, noise=noise, grad="last_k", k=1)
    assert traj.grad_steps == [3]
    g_k1 = _lora_grads(gen, gen.decode(traj.final).sum())
    assert sum(float(g.abs().sum()) for g in g_k1.values()) > 0
    # the same gradient from running only the last step by hand on the detached penultimate state
    x, t, tn = traj.latents[-2], float(traj.timesteps[-2]), float(traj.timesteps[-1])
    manual = x + (tn - t) * gen.predict(x, t, cond)
    g_manual = _lora_grads(gen, gen.decode(manual).sum())
    for n in g_k1:
        assert torch.allclose(g_k1[n], g_manual[n], atol=1e-6, rtol=1e-4), n
    # K = 2 differs from K = 1; checkpointing does not change gradients
    g_k2 = _lora_grads(gen, gen.decode(gen.sample(cond, 4, noise=noise, grad="last_k", k=2).final).sum())
    g_k2_nockpt = _lora_grads(gen, gen.decode(
        gen.sample(cond, 4, noise=noise, grad="last_k", k=2, checkpoint=False).final).sum())
    assert any(not torch.allclose(g_k1[n], g_k2[n]) for n in g_k1)
    for n in g_k2:
        assert torch.allclose(g_k2[n], g_k2_nockpt[n], atol=1e-6, rtol=1e-4), n
    # no gradient at all without grad
    assert not gen.sample(cond, 4, noise=noise).final.requires_grad
    # random K is drawn in [1, steps]
    ks = {len(gen.sample(cond, 4, noise=noise, grad="last_k", k="random",
                         generator=torch.Generator().manual_seed(s)).grad_steps) for s in range(12)}
    assert ks <= {1, 2, 3, 4} and len(ks) > 1


def test_reference_gives_base_output_after_lora_changes(flow_gen):
    gen = flow_gen
    cond = gen.encode_prompts(PROMPTS)
    x = gen.initial_noise(2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = gen.predict(x, 0.5, cond)
    with pytest.raises(RuntimeError, match="add_lora"):
        with gen.reference():
            pass
    gen.add_lora(rank=2)
    with torch.no_grad():
        for n, p in gen.denoiser.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
        policy = gen.predict(x, 0.5, cond)
        with gen.reference():
            ref = gen.predict(x, 0.5, cond)
        again = gen.predict(x, 0.5, cond)
    assert not torch.allclose(policy, base, atol=1e-4)
    assert torch.allclose(ref, base, atol=1e-6)
    assert torch.equal(again, policy)


def test_snapshot_reference_for_full_finetuning(flow_gen):
    gen = flow_gen
    cond = gen.encode_prompts(PROMPTS)
    x = gen.initial_noise(2)
    with torch.no_grad():
        base = gen.predict(x, 0.5, cond)
        gen.snapshot_reference()
        for p in gen.denoiser.parameters():
            p.add_(0.01)
        with gen.reference():
            ref = gen.predict(x, 0.5, cond)
    assert torch.allclose(ref, base, atol=1e-6)


def test_editing_mode_starts_from_noised_x0(flow_gen):
    cond = flow_gen.encode_prompts(PROMPTS)
    x0 = torch.rand(2, 3, 32, 32)
    lat = flow_gen.encode_images(x0)
    noise = flow_gen.initial_noise(2, torch.Generator().manual_seed(0))
    traj = flow_gen.sample(cond, 10, noise=noise, x0=lat, t0=0.6)
    full = flow_gen.timesteps(10)
    assert traj.num_steps == 6 and torch.equal(traj.timesteps, full[4:])
    assert torch.allclose(traj.latents[0], flow_gen.noisy(lat, noise, full[4].expand(2)))
    with pytest.raises(ValueError, match="t0"):
        flow_gen.sample(cond, 10, noise=noise, x0=lat, t0=1.5)


def test_encode_images_decode_round_trip(flow_gen):
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(flow_gen.decode(flow_gen.encode_images(x)), x, atol=1e-6)


def test_bad_inputs(flow_gen):
    cond = flow_gen.encode_prompts(PROMPTS)
    with pytest.raises(ValueError, match="grad must be"):
        flow_gen.sample(cond, 2, grad="some")
    with pytest.raises(ValueError, match="noise batch"):
        flow_gen.sample(cond, 2, noise=flow_gen.initial_noise(3))
    with pytest.raises(ValueError, match="steps must be"):
        flow_gen.sample(cond, 0)


def test_pipeline_save_load_round_trip(tiny_pipe_dir, tmp_path):
    from rewardflow.toy.generator import ToyGenerator
    from rewardflow.toy.pipeline import ToyFlowPipeline

    pipe = ToyFlowPipeline.from_pretrained(str(tiny_pipe_dir))
    assert (tiny_pipe_dir / "model_index.json").exists()
    assert (tiny_pipe_dir / "unet" / "diffusion_pytorch_model.safetensors").exists()
    pipe.save_pretrained(str(tmp_path))
    a, b = ToyGenerator(pipe), ToyGenerator.from_pretrained(tmp_path)
    noise = a.initial_noise(2, torch.Generator().manual_seed(0))
    assert torch.equal(a.generate(PROMPTS, 3, noise=noise), b.generate(PROMPTS, 3, noise=noise))
    with pytest.raises(FileNotFoundError, match="train-generator"):
        ToyGenerator.from_pretrained(tmp_path / "missing")


def test_sde_checkpointing_is_exact(flow_gen):
    gen = flow_gen
    gen.add_lora(rank=2)
    cond = gen.encode_prompts(PROMPTS)
    noise = gen.initial_noise(2, torch.Generator().manual_seed(0))
    runs = []
    for ckpt in (True, False):
        traj = gen.sample(cond, 3, noise=noise, sde=True, grad="all", checkpoint=ckpt,
                          generator=torch.Generator().manual_seed(7))
        runs.append((traj.final.detach(), traj.log_probs, _lora_grads(gen, gen.decode(traj.final).sum())))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    for n in runs[0][2]:
        assert torch.allclose(runs[0][2][n], runs[1][2][n], atol=1e-6, rtol=1e-4), n


def test_guidance_per_call_and_missing_uncond(flow_gen):
    cond = flow_gen.encode_prompts(PROMPTS)
    x = flow_gen.initial_noise(2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        c = flow_gen.predict(x, 0.5, cond, guidance_scale=1.0)
        g3 = flow_gen.predict(x, 0.5, cond, guidance_scale=3.0)
        u = flow_gen._forward(x, flow_gen.model_time(torch.full((2,), 0.5)), cond.uncond)
    assert torch.allclose(g3, u + 3.0 * (c - u), atol=1e-5)
    cond.uncond = None
    with pytest.raises(ValueError, match="unconditional"):
        flow_gen.predict(x, 0.5, cond, guidance_scale=3.0)
