"""SD3 and FLUX.1 adapters on tiny random pipelines built from the real diffusers / transformers classes.

The pipelines (``SD3Transformer2DModel`` / ``FluxTransformer2DModel``, ``AutoencoderKL``, CLIP (with projection),
T5 encoder, tokenizers from vocabulary files written locally) are saved with ``save_pretrained`` and loaded back
through ``load_generator``. Reference outputs come from the plain diffusers pipelines.
"""

import math
import os
import shutil

import numpy as np
import pytest
import torch

from rewardflow.pipelines.registry import load_generator

PROMPTS = ["a red circle", "two blue squares"]
SIZE = 32  # pixels; latents are 16x16 (tiny VAE factor 2)
T5_LEN = 16
CFG_ATOL = 1e-5  # CFG only: the cached "" embedding is encoded alone, the pipeline encodes it batched (~2e-7 apart)


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory):
    from rewardflow.testing.tiny_flow import build_tiny_sd3

    d = tmp_path_factory.mktemp("sd3")
    build_tiny_sd3(d)
    return d


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    from rewardflow.testing.tiny_flow import build_tiny_flux

    d = tmp_path_factory.mktemp("flux_dev")
    build_tiny_flux(d, guidance_embeds=True)
    return d


@pytest.fixture(scope="module")
def schnell_dir(tmp_path_factory):
    from rewardflow.testing.tiny_flow import build_tiny_flux

    d = tmp_path_factory.mktemp("flux_schnell")
    build_tiny_flux(d, guidance_embeds=False, seed=5)
    return d


def _gen(path, **kw):
    return load_generator(path, height=SIZE, width=SIZE, max_sequence_length=T5_LEN, **kw)


def _pipe_latents(gen, noise, steps, guidance, generator=None, output_type="latent"):
    """The plain diffusers pipeline of ``gen`` on the same noise (FLUX: packed latents in and out)."""
    from diffusers import FluxPipeline

    flux = isinstance(gen.pipe, FluxPipeline)
    lat = None
    if noise is not None:
        lat = FluxPipeline._pack_latents(noise, *noise.shape) if flux else noise
    out = gen.pipe(PROMPTS, num_inference_steps=steps, height=SIZE, width=SIZE, guidance_scale=guidance,
                   latents=lat, generator=generator, output_type=output_type, max_sequence_length=T5_LEN).images
    if flux and output_type == "latent":
        out = FluxPipeline._unpack_latents(out, SIZE, SIZE, gen.pipe.vae_scale_factor)
    return out


def _perturb_lora(gen, std=0.3):
    with torch.no_grad():  # make the adapters matter (peft initialises lora_B to zero)
        for n, p in gen.denoiser.named_parameters():
            if "lora_B" in n:
                p.normal_(0, std)


def _grads(gen, loss):
    gen.denoiser.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in gen.denoiser.named_parameters() if p.requires_grad}


# ---------------------------------------------------------------------------------------------- loading / registry
def test_load_generator_picks_adapter(sd3_dir, flux_dir):
    from rewardflow.pipelines.flux import FluxGenerator
    from rewardflow.pipelines.sd3 import SD3Generator

    sd3, flux = _gen(sd3_dir), _gen(flux_dir)
    assert type(sd3) is SD3Generator and type(flux) is FluxGenerator
    assert sd3.parametrization == flux.parametrization == "flow"
    assert sd3.latent_shape == flux.latent_shape == (4, 16, 16)
    assert sd3.guidance_scale == 7.0 and flux.guidance_scale == 3.5  # the pipelines' __call__ defaults


def test_missing_component_and_wrong_path_name_the_file(sd3_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        _gen(tmp_path / "does-not-exist", adapter="sd3")
    no_t5 = tmp_path / "no_t5_weights"
    shutil.copytree(sd3_dir, no_t5)
    for f in os.listdir(no_t5 / "text_encoder_3"):
        if f.endswith(".safetensors"):
            os.remove(no_t5 / "text_encoder_3" / f)
    with pytest.raises(FileNotFoundError, match=r"text_encoder_3.*model\.safetensors"):
        _gen(no_t5)
    no_vae = tmp_path / "no_vae"
    shutil.copytree(sd3_dir, no_vae)
    shutil.rmtree(no_vae / "vae")
    with pytest.raises(FileNotFoundError, match=r"component 'vae'.*no folder"):
        _gen(no_vae, adapter="sd3")


def test_bad_resolution_is_refused(sd3_dir):
    from rewardflow.pipelines.sd3 import SD3Generator

    with pytest.raises(ValueError, match="multiples of 4"):
        SD3Generator.from_pretrained(sd3_dir, height=30, width=32)


# ---------------------------------------------------------------------------------------------- schedules
def test_sd3_grid_is_the_shifted_schedule(sd3_dir):
    gen = _gen(sd3_dir)
    s = 3.0  # scheduler shift of the tiny pipeline (the SD3 / SD3.5 value)
    shift = lambda x: s * x / (1 + (s - 1) * x)
    sigma_min = shift(1 / 1000)
    want = np.append(shift(np.linspace(1.0, sigma_min, 5)), 0.0)
    assert np.allclose(gen.timesteps(5).numpy(), want, atol=1e-6)


def test_sd3_dynamic_shifting_matches_pipeline(sd3_dir):
    from diffusers import FlowMatchEulerDiscreteScheduler

    gen = _gen(sd3_dir, guidance_scale=1.0)
    static = gen.timesteps(4)
    gen.scheduler = gen.pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(
        gen.scheduler.config, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.2)
    seq = (16 // 2) ** 2  # 2x2 patches of a 16x16 latent
    assert math.isclose(gen._set_timesteps_kwargs(4)["mu"], 0.5 + (1.2 - 0.5) / (4096 - 256) * (seq - 256))
    grid = gen.timesteps(4)
    noise = gen.initial_noise(2, torch.Generator().manual_seed(0))
    _pipe_latents(gen, noise, 4, 1.0)  # the pipeline sets its (shared) scheduler's sigmas with its own mu
    assert torch.equal(grid, gen.pipe.scheduler.sigmas.float())
    assert not torch.allclose(grid, static, atol=1e-3)


def test_flux_grid_uses_dynamic_shift_mu(flux_dir):
    gen = _gen(flux_dir)
    seq = (16 // 2) * (16 // 2)  # packed 2x2 patches of a 16x16 latent
    mu = 0.5 + (1.15 - 0.5) / (4096 - 256) * (seq - 256)  # linear in the sequence length (FLUX.1 reference)
    base = np.linspace(1.0, 1 / 6, 6)
    want = np.append(math.exp(mu) / (math.exp(mu) + (1 / base - 1)), 0.0)
    assert np.allclose(gen.timesteps(6).numpy(), want, atol=1e-6)


# ---------------------------------------------------------------------------------------------- ODE == diffusers
@pytest.mark.parametrize("which,guidance,steps", [("sd3", 1.0, 3), ("sd3", 4.5, 3), ("flux", 3.5, 3),
                                                  ("flux", 1.0, 2), ("schnell", 0.0, 1)])
def test_ode_sample_equals_diffusers_pipeline(request, which, guidance, steps):
    path = request.getfixturevalue({"sd3": "sd3_dir", "flux": "flux_dir", "schnell": "schnell_dir"}[which])
    gen = _gen(path, guidance_scale=guidance)
    noise = gen.initial_noise(2, torch.Generator().manual_seed(7))
    traj = gen.sample(gen.encode_prompts(PROMPTS), steps, noise=noise)
    pixels = gen.decode(traj.final)
    atol = CFG_ATOL if which == "sd3" and guidance > 1 else 0.0
    ref_lat = _pipe_latents(gen, noise, steps, guidance)
    assert torch.allclose(traj.final, ref_lat, atol=atol, rtol=0), (traj.final - ref_lat).abs().max()
    # same seed -> same noise -> same pixels (decode = the pipeline's VAE decode + postprocessing)
    ref_px = _pipe_latents(gen, None, steps, guidance, torch.Generator().manual_seed(7), output_type="pt")
    assert pixels.shape == (2, 3, SIZE, SIZE)
    assert torch.allclose(pixels, ref_px, atol=atol, rtol=0), (pixels - ref_px).abs().max()


def test_decode_uses_scaling_and_shift_factor(sd3_dir):
    gen = _gen(sd3_dir)
    vae = gen.pipe.vae
    z = torch.randn(1, *gen.latent_shape)
    want = (vae.decode(z / 1.5305 + 0.0609).sample / 2 + 0.5).clamp(0, 1)  # official SD3 VAE constants
    assert torch.allclose(gen.decode(z), want, atol=1e-6)
    img = torch.rand(1, 3, SIZE, SIZE)
    want_z = (vae.encode(img * 2 - 1).latent_dist.mode() - 0.0609) * 1.5305
    assert torch.allclose(gen.encode_images(img), want_z, atol=1e-6)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        gen.encode_images(torch.rand(3, SIZE, SIZE))


def test_prompt_cache_encodes_each_prompt_once(flux_dir):
    gen = _gen(flux_dir)
    calls = []
    hook = gen.pipe.text_encoder_2.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    a = gen.encode_prompts(PROMPTS)
    b = gen.encode_prompts(PROMPTS[::-1] + PROMPTS)
    hook.remove()
    assert calls == [2]  # the second call is served from the cache
    assert torch.equal(b.embeds["prompt_embeds"][1], a.embeds["prompt_embeds"][0])
    assert b.embeds["pooled_projections"].shape == (4, 16) and a.uncond is None


# ---------------------------------------------------------------------------------------------- guidance
def test_sd3_cfg_on_off(sd3_dir):
    gen = _gen(sd3_dir)
    cond = gen.encode_prompts(PROMPTS)
    x, t = torch.randn(2, *gen.latent_shape), 0.6
    c = gen.predict(x, t, cond, guidance_scale=1.0)  # off: one conditional forward
    u = gen._forward(x, gen.model_time(torch.full((2,), t)), cond.uncond)
    on = gen.predict(x, t, cond, guidance_scale=5.0)
    assert torch.allclose(on, u + 5.0 * (c - u), atol=1e-5)
    assert not torch.allclose(on, c, atol=1e-3)


def test_flux_dev_distilled_guidance_has_no_cfg_doubling(flux_dir):
    gen = _gen(flux_dir)
    cond = gen.encode_prompts(PROMPTS)
    x, t = torch.randn(2, *gen.latent_shape), 0.6
    seen = []
    hook = gen.denoiser.register_forward_hook(
        lambda m, a, kw, o: seen.append((kw["hidden_states"].shape[0], kw["guidance"].tolist())), with_kwargs=True)
    g1, g4 = gen.predict(x, t, cond, guidance_scale=1.0), gen.predict(x, t, cond, guidance_scale=4.0)
    hook.remove()
    assert seen == [(2, [1.0, 1.0]), (2, [4.0, 4.0])]  # one forward of batch B, guidance as an input
    assert not torch.allclose(g1, g4, atol=1e-4)


def test_flux_schnell_ignores_guidance(schnell_dir):
    gen = _gen(schnell_dir)
    cond = gen.encode_prompts(PROMPTS)
    x = torch.randn(2, *gen.latent_shape)
    assert torch.equal(gen.predict(x, 1.0, cond, guidance_scale=1.0), gen.predict(x, 1.0, cond, guidance_scale=9.0))


# ---------------------------------------------------------------------------------------------- SDE / gradients
@pytest.mark.parametrize("which", ["sd3", "flux"])
def test_sde_recorded_and_recomputed_log_probs_agree(request, which):
    gen = _gen(request.getfixturevalue(f"{which}_dir"), guidance_scale=3.0)
    cond = gen.encode_prompts(PROMPTS)
    traj = gen.sample(cond, 3, sde=True, generator=torch.Generator().manual_seed(1))
    assert traj.log_probs.shape == (2, 3)
    smax = float(traj.timesteps[1])
    for i in range(3):
        lp = gen.log_prob(traj.latents[i], traj.latents[i + 1], traj.timesteps[i], traj.timesteps[i + 1], cond,
                          noise_level=0.7, sigma_max=smax)
        assert torch.allclose(lp, traj.log_probs[:, i], atol=1e-5, rtol=0), (i, lp, traj.log_probs[:, i])


@pytest.mark.parametrize("which", ["sd3", "flux"])
def test_gradients_only_through_last_k_steps(request, which):
    gen = _gen(request.getfixturevalue(f"{which}_dir"), guidance_scale=2.0)
    gen.add_lora(rank=2)
    _perturb_lora(gen, 0.1)
    cond = gen.encode_prompts(PROMPTS)
    noise = gen.initial_noise(2, torch.Generator().manual_seed(0)).requires_grad_(True)
    traj = gen.sample(cond, 4, noise=noise, grad="last_k", k=2)
    assert traj.grad_steps == [2, 3]
    g = _grads(gen, gen.decode(traj.final).mean())
    assert noise.grad is None  # the first two steps carry no graph
    assert sum(float(v.abs().sum()) for v in g.values()) > 0
    # by hand: two Euler steps with grad from the detached state at grid point 2
    x = traj.latents[2]
    for i in (2, 3):
        t, tn = float(traj.timesteps[i]), float(traj.timesteps[i + 1])
        x = x + (tn - t) * gen.predict(x, t, cond)
    g_hand = _grads(gen, gen.decode(x).mean())
    for n in g:
        assert torch.allclose(g[n], g_hand[n], atol=1e-7, rtol=1e-4), n


def test_schnell_one_step_is_differentiable_from_noise_to_pixels(schnell_dir):
    gen = _gen(schnell_dir)
    cond = gen.encode_prompts(PROMPTS[:1])
    noise = gen.initial_noise(1, torch.Generator().manual_seed(3)).requires_grad_(True)

    def loss_of(n):
        return gen.decode(gen.sample(cond, 1, noise=n, grad="all").final).mean()

    loss_of(noise).backward()
    assert noise.grad is not None and noise.grad.abs().sum() > 0
    d = torch.randn_like(noise)
    eps = 1e-2
    with torch.no_grad():
        fd = (loss_of(noise + eps * d) - loss_of(noise - eps * d)) / (2 * eps)
    assert math.isclose(float((noise.grad * d).sum()), float(fd), rel_tol=2e-2, abs_tol=1e-5)


# ---------------------------------------------------------------------------------------------- LoRA
@pytest.mark.parametrize("which", ["sd3", "flux"])
def test_lora_saved_loads_in_plain_diffusers(request, which, tmp_path):
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    path = request.getfixturevalue(f"{which}_dir")
    gen = _gen(path, guidance_scale=1.0)
    gen.add_lora(rank=4)
    names = {n.split(".lora_B")[0] for n, _ in gen.denoiser.named_parameters() if "lora_B" in n}
    expected = {"attn.to_q", "attn.add_q_proj", "attn.to_add_out"} | ({"ff.net.2", "ff_context.net.2"}
                                                                        if which == "flux" else set())
    assert all(any(n.endswith(e) for n in names) for e in expected), names
    _perturb_lora(gen)
    noise = gen.initial_noise(2, torch.Generator().manual_seed(2))
    ours = gen.sample(gen.encode_prompts(PROMPTS), 2, noise=noise).final
    with gen.reference():
        base = gen.sample(gen.encode_prompts(PROMPTS), 2, noise=noise).final
    assert (ours - base).abs().max() > 1e-2  # the LoRA changes the output
    gen.save_lora(tmp_path)

    gen2 = _gen(path, guidance_scale=1.0)
    cls = StableDiffusion3Pipeline if which == "sd3" else FluxPipeline
    assert isinstance(gen2.pipe, cls)
    gen2.pipe.load_lora_weights(str(tmp_path))  # plain diffusers
    theirs = _pipe_latents(gen2, noise, 2, 1.0)
    assert torch.allclose(theirs, ours, atol=1e-5, rtol=0), (theirs - ours).abs().max()
    gen3 = _gen(path, guidance_scale=1.0)
    gen3.load_lora(tmp_path)
    assert torch.equal(gen3.sample(gen3.encode_prompts(PROMPTS), 2, noise=noise).final, ours)
