"""SD 1.x/2.x, SD-Turbo and SDXL adapters on tiny random pipelines built from the real classes, saved with
``save_pretrained`` and loaded through ``load_generator``; LoRA files read by plain diffusers."""

import shutil

import pytest
import torch

from rewardflow.testing.tiny_sd import build_tiny_sd, build_tiny_sdxl
from rewardflow.pipelines.registry import load_generator

PROMPTS = ["a red cat", "two blue dogs"]
# the adapter and diffusers run the same float32 ops in the same order: observed max difference 0.0
ATOL = 1e-5


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_sd")
    build_tiny_sd(root / "sd")
    build_tiny_sd(root / "sd_v", prediction_type="v_prediction", seed=1)
    build_tiny_sd(root / "sd_turbo", turbo=True, seed=2)
    build_tiny_sdxl(root / "sdxl")
    build_tiny_sdxl(root / "sdxl_turbo", turbo=True, seed=3)
    return root


def _noise(gen, seed=0, n=2):
    return gen.initial_noise(n, torch.Generator().manual_seed(seed))


def _pipe_images(pipe, noise, steps, guidance):
    return pipe(PROMPTS, num_inference_steps=steps, guidance_scale=guidance, latents=noise, output_type="pt").images


def _randomize_lora(gen, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in gen.denoiser.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.mark.parametrize("name,ptype,adapter", [("sd", "epsilon", "StableDiffusionGenerator"),
                                                ("sd_v", "v_prediction", "StableDiffusionGenerator"),
                                                ("sdxl", "epsilon", "StableDiffusionXLGenerator")])
def test_ode_sample_equals_diffusers_pipeline(dirs, name, ptype, adapter):
    gen = load_generator(dirs / name)
    assert type(gen).__name__ == adapter and gen.parametrization == ptype
    noise = _noise(gen)
    outs = {}
    for g in (1.0, 4.0):
        outs[g] = gen.generate(PROMPTS, 4, noise=noise, guidance_scale=g)
        ref = _pipe_images(gen.pipe, noise, 4, g)
        assert outs[g].shape == (2, 3, 16, 16)
        assert torch.allclose(outs[g], ref, atol=ATOL), (g, (outs[g] - ref).abs().max())
    assert (outs[1.0] - outs[4.0]).abs().max() > 1e-3  # guidance changes the images


def test_sdxl_turbo_one_step_equals_diffusers_euler_ancestral(dirs):
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionXLPipeline

    gen = load_generator(dirs / "sdxl_turbo", guidance_scale=1.0)
    noise = _noise(gen)
    shipped = StableDiffusionXLPipeline.from_pretrained(str(dirs / "sdxl_turbo"))
    assert isinstance(shipped.scheduler, EulerAncestralDiscreteScheduler)
    # one ancestral step to sigma 0 adds no noise; trailing init_noise_sigma = sigma_max (see the SD-Turbo test)
    ref = _pipe_images(shipped, noise, 1, 0.0)
    ab_t = float(shipped.scheduler.alphas_cumprod[999])
    ours = gen.generate(PROMPTS, 1, noise=noise * (1 - ab_t) ** 0.5)
    assert torch.allclose(ours, ref, atol=1e-4), (ours - ref).abs().max()


def test_turbo_one_step_equals_diffusers_euler_and_is_differentiable(dirs):
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    gen = load_generator(dirs / "sd_turbo", guidance_scale=1.0)
    noise = _noise(gen)
    # the pipeline as shipped (EulerDiscreteScheduler, trailing spacing): DDIM == Euler on the same grid
    euler = StableDiffusionPipeline.from_pretrained(str(dirs / "sd_turbo"))
    assert isinstance(euler.scheduler, EulerDiscreteScheduler)
    for steps in (1, 4):
        ref = _pipe_images(euler, noise, steps, 0.0)  # guidance <= 1 is "off" in diffusers
        # Euler with trailing spacing starts from latents * init_noise_sigma = latents * sigma_max (not
        # sqrt(sigma_max^2 + 1)): in DDIM variables that is the noise times sqrt(1 - alpha_bar_T)
        ab_t = float(euler.scheduler.alphas_cumprod[999])
        ours = gen.generate(PROMPTS, steps, noise=noise * (1 - ab_t) ** 0.5)
        assert torch.allclose(ours, ref, atol=1e-4), (steps, (ours - ref).abs().max())
    # 3 steps with trailing spacing: DDIM's stride (1000 // 3) is not the grid spacing; match the scheduler
    assert torch.allclose(gen.generate(PROMPTS, 3, noise=noise), _pipe_images(gen.pipe, noise, 3, 1.0), atol=ATOL)

    # one step, differentiable from the initial noise to the pixels (ReNO): autograd == finite difference
    cond = gen.encode_prompts(PROMPTS)
    x = noise.clone().requires_grad_(True)
    f = lambda z: gen.decode(gen.sample(cond, 1, noise=z, grad="all").final).mean()  # noqa: E731
    f(x).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    d = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    eps = 1e-2
    with torch.no_grad():
        fd = (f(noise + eps * d) - f(noise - eps * d)) / (2 * eps)
    assert torch.allclose((x.grad * d).sum(), fd, rtol=2e-2, atol=1e-6), ((x.grad * d).sum(), fd)


@pytest.mark.parametrize("name", ["sd", "sdxl"])
def test_sde_recorded_and_recomputed_log_probs_agree(dirs, name):
    gen = load_generator(dirs / name, guidance_scale=2.0)
    cond = gen.encode_prompts(PROMPTS)
    traj = gen.sample(cond, 4, sde=True, noise=_noise(gen), generator=torch.Generator().manual_seed(3))
    assert traj.log_probs.shape == (2, 4)
    for i in range(4):
        lp = gen.log_prob(traj.latents[i], traj.latents[i + 1], traj.timesteps[i], traj.timesteps[i + 1], cond,
                          noise_level=1.0)
        assert torch.allclose(lp, traj.log_probs[:, i], atol=1e-5, rtol=0), (i, lp, traj.log_probs[:, i])
    # a different transition has a different (lower) density under the policy
    other = gen.log_prob(traj.latents[0], traj.latents[2], traj.timesteps[0], traj.timesteps[1], cond, 1.0)
    assert (other < traj.log_probs[:, 0]).all()


def test_sde_equals_diffusers_ddim_eta_and_survives_other_step_counts(dirs):
    """DDIM eta=1 in diffusers draws one Gaussian per step from the generator, as Generator.sample does, so the
    chains are equal; with trailing spacing and 3 steps DDIM's targets are not the grid points (1000 // 3).
    The last step differs on purpose: diffusers ends at alpha_bar = 1 (Euler source: set_alpha_to_one), a
    deterministic step; like ddpo-pytorch (previous timestep clamped to 0) the SDE ends at alpha_bar[0], with a
    log-prob."""
    gen = load_generator(dirs / "sd_turbo", guidance_scale=2.0)
    cond = gen.encode_prompts(PROMPTS)
    noise = _noise(gen)
    traj = gen.sample(cond, 3, sde=True, noise=noise, generator=torch.Generator().manual_seed(4))
    seen = []

    def keep(pipe, i, t, kw):
        seen.append(kw["latents"].clone())
        return kw

    gen.pipe(PROMPTS, num_inference_steps=3, guidance_scale=2.0, eta=1.0, latents=noise, output_type="latent",
             generator=torch.Generator().manual_seed(4), callback_on_step_end=keep)
    for i in (1, 2):
        assert torch.allclose(traj.latents[i], seen[i - 1], atol=ATOL), i
    assert traj.log_probs.shape == (2, 3) and torch.isfinite(traj.log_probs).all()
    assert traj.timesteps.tolist() == [999.0, 666.0, 332.0, -1.0]
    # the last step: DDIM eta=1 from t=332 to alpha_bar[0] (not 1), std = sqrt((1-a0)/(1-a) * (1 - a/a0))
    ac = gen.scheduler.alphas_cumprod.double()
    a, a0 = ac[332], ac[0]
    x = traj.latents[2]
    st = gen.step(gen.predict(x, 332.0, cond), x, 332.0, -1.0, noise_level=1.0, prev_sample=traj.latents[3])
    assert float(st.std) == pytest.approx(float(((1 - a0) / (1 - a) * (1 - a / a0)).sqrt()), rel=1e-5)
    assert torch.allclose(st.log_prob, traj.log_probs[:, 2], atol=1e-5)
    gen.timesteps(7)  # e.g. an evaluation at another step count in between
    for i in range(3):
        lp = gen.log_prob(traj.latents[i], traj.latents[i + 1], traj.timesteps[i], traj.timesteps[i + 1], cond, 1.0)
        assert torch.allclose(lp, traj.log_probs[:, i], atol=1e-5, rtol=0), i


def test_one_step_ddpo_rollout_on_sd_turbo_has_a_log_prob(dirs):
    """A 1-step SDE rollout on a set_alpha_to_one scheduler (SD-Turbo): the step goes from t=999 to alpha_bar[0]
    with std eta * sqrt((1-a0)/(1-a999) * (1 - a999/a0)) (ddpo-pytorch's clamp), so DDPO has a log-prob to train;
    the ODE step still ends at alpha_bar = 1 (x0 exactly, as diffusers)."""
    gen = load_generator(dirs / "sd_turbo", adapter="sd")
    cond = gen.encode_prompts(PROMPTS)
    noise = _noise(gen)
    traj = gen.sample(cond, 1, sde=True, noise=noise, generator=torch.Generator().manual_seed(0))
    assert traj.log_probs.shape == (2, 1) and torch.isfinite(traj.log_probs).all()
    lp = gen.log_prob(traj.latents[0], traj.latents[1], traj.timesteps[0], traj.timesteps[1], cond, 1.0)
    assert torch.allclose(lp, traj.log_probs[:, 0], atol=1e-5)
    ac = gen.scheduler.alphas_cumprod.double()
    out = gen.predict(noise, 999.0, cond)
    st = gen.step(out, noise, 999.0, -1.0, noise_level=1.0, prev_sample=traj.latents[1])
    want = float(((1 - ac[0]) / (1 - ac[999]) * (1 - ac[999] / ac[0])).sqrt())
    assert float(st.std) == pytest.approx(want, rel=1e-5) and want > 0
    x0, eps = gen.convert(out, noise, torch.tensor(999.0))
    mean = ac[0].sqrt().float() * x0 + (1 - ac[0] - want ** 2).clamp(min=0).sqrt().float() * eps
    assert torch.allclose(st.mean, mean, atol=1e-5)
    ode = gen.step(out, noise, 999.0, -1.0)
    assert ode.log_prob is None and torch.allclose(ode.prev_sample, x0, atol=1e-5)


def _lora_grads(gen, loss):
    params = [p for p in gen.denoiser.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params, allow_unused=True)


def test_gradients_only_through_last_k_steps(dirs):
    gen = load_generator(dirs / "sd", guidance_scale=2.0)
    gen.add_lora(rank=2)
    _randomize_lora(gen)
    assert all("lora" in n for n, p in gen.denoiser.named_parameters() if p.requires_grad)
    cond = gen.encode_prompts(PROMPTS)
    noise = _noise(gen).requires_grad_(True)
    traj = gen.sample(cond, 4, noise=noise, grad="last_k", k=1)
    assert traj.grad_steps == [3]
    loss = gen.decode(traj.final).sum()
    g1 = _lora_grads(gen, loss)
    assert sum(float(g.abs().sum()) for g in g1) > 0
    # the initial noise is outside the graph (only the last step carries gradients)
    again = gen.decode(gen.sample(cond, 4, noise=noise, grad="last_k", k=1).final).sum()
    assert torch.autograd.grad(again, noise, allow_unused=True)[0] is None
    # the same gradient from the last step by hand on the detached penultimate state
    x, t, tn = traj.latents[-2], traj.timesteps[-2], traj.timesteps[-1]
    manual = gen.step(gen.predict(x, t, cond), x, t, tn).prev_sample
    gm = _lora_grads(gen, gen.decode(manual).sum())
    for a, b in zip(g1, gm):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)
    # all steps: the noise gets a gradient
    full = gen.sample(cond, 4, noise=noise, grad="all")
    assert full.grad_steps == [0, 1, 2, 3]
    gn = torch.autograd.grad(gen.decode(full.final).sum(), noise)[0]
    assert gn.abs().sum() > 0


@pytest.mark.parametrize("name,pipe_cls", [("sd", "StableDiffusionPipeline"), ("sdxl", "StableDiffusionXLPipeline")])
def test_lora_save_loads_in_plain_diffusers(dirs, tmp_path, name, pipe_cls):
    import diffusers

    gen = load_generator(dirs / name)
    noise = _noise(gen)
    base = gen.generate(PROMPTS, 3, noise=noise)
    gen.add_lora(rank=4, alpha=8)  # alpha != rank: the scale must travel with the file
    _randomize_lora(gen)
    with_lora = gen.generate(PROMPTS, 3, noise=noise)
    assert (with_lora - base).abs().max() > 1e-2
    f = gen.save_lora(tmp_path / "lora")
    assert f.endswith("pytorch_lora_weights.safetensors")

    pipe = getattr(diffusers, pipe_cls).from_pretrained(str(dirs / name))
    pipe.load_lora_weights(str(tmp_path / "lora"))
    ref = _pipe_images(pipe, noise, 3, gen.guidance_scale)
    assert torch.allclose(ref, with_lora, atol=ATOL), (ref - with_lora).abs().max()

    gen2 = load_generator(dirs / name)
    gen2.load_lora(tmp_path / "lora")
    assert torch.allclose(gen2.generate(PROMPTS, 3, noise=noise), with_lora, atol=ATOL)
    trainable = [n for n, p in gen2.denoiser.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad(), gen2.reference():
        assert torch.allclose(gen2.decode(gen2.sample(gen2.encode_prompts(PROMPTS), 3, noise=noise).final), base,
                              atol=ATOL)


def test_toy_lora_round_trip(tmp_path, flow_gen, tiny_pipe_dir):
    from rewardflow.toy.generator import ToyGenerator

    flow_gen.add_lora(rank=2)
    _randomize_lora(flow_gen)
    noise = _noise(flow_gen)
    want = flow_gen.generate(PROMPTS, 3, noise=noise)
    flow_gen.save_lora(tmp_path)
    other = ToyGenerator.from_pretrained(tiny_pipe_dir)
    other.load_lora(tmp_path, trainable=False)
    assert not any(p.requires_grad for n, p in other.denoiser.named_parameters() if "lora_" in n)
    assert torch.allclose(other.generate(PROMPTS, 3, noise=noise), want, atol=1e-6)


@pytest.mark.parametrize("name", ["sd", "sdxl"])
def test_guidance_matches_cfg_formula(dirs, name):
    gen = load_generator(dirs / name)
    cond = gen.encode_prompts(PROMPTS)
    x = _noise(gen)
    t = gen.timesteps(4)[1]
    with torch.no_grad():
        c = gen.predict(x, t, cond, guidance_scale=1.0)
        g = gen.predict(x, t, cond, guidance_scale=6.0)
        u = gen._forward(x, torch.full((2,), float(t)), cond.uncond)
    assert (g - c).abs().max() > 1e-3
    assert torch.allclose(g, u + 6.0 * (c - u), atol=1e-5)
    if name == "sdxl":  # force_zeros_for_empty_prompt: the unconditional branch is zeros, time ids kept
        assert cond.uncond["encoder_hidden_states"].abs().sum() == 0 and cond.uncond["text_embeds"].abs().sum() == 0
        assert cond.uncond["time_ids"].tolist() == [[16, 16, 0, 0, 16, 16]] * 2


def test_text_encoder_outputs_cached_per_prompt(dirs):
    gen = load_generator(dirs / "sd")
    calls = []
    h = gen.pipe.text_encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    a = gen.encode_prompts(PROMPTS)
    b = gen.encode_prompts([PROMPTS[1], "a green square", PROMPTS[0]])
    h.remove()
    assert calls == [2, 1, 1]  # two prompts, the empty prompt, then only the new one
    assert torch.equal(b.embeds["encoder_hidden_states"][2], a.embeds["encoder_hidden_states"][0])


def test_vae_decode_encode_use_config_factors(dirs):
    gen = load_generator(dirs / "sdxl")
    vae = gen.pipe.vae
    assert vae.config.scaling_factor == 0.13025
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        want = (vae.decode(z / 0.13025).sample / 2 + 0.5).clamp(0, 1)
        assert torch.allclose(gen.decode(z), want, atol=1e-6)
        img = torch.rand(1, 3, 16, 16)
        assert torch.allclose(gen.encode_images(img), vae.encode(img * 2 - 1).latent_dist.mean * 0.13025, atol=1e-6)


def test_missing_component_and_wrong_path_errors(dirs, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(dirs / "sd", broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"unet.*no weight file.*diffusion_pytorch_model\.safetensors"):
        load_generator(broken)
    shutil.rmtree(broken / "vae")
    shutil.copytree(dirs / "sd" / "unet", broken / "unet", dirs_exist_ok=True)
    with pytest.raises(FileNotFoundError, match=r"component 'vae'.*no folder .*broken/vae"):
        load_generator(broken)
    (broken / "model_index.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"model_index\.json is missing"):
        load_generator(broken, adapter="sd")
    with pytest.raises(FileNotFoundError, match=r"pipeline directory not found: .*nowhere"):
        load_generator(tmp_path / "nowhere", adapter="sd")
    gen = load_generator(dirs / "sd")
    with pytest.raises(FileNotFoundError, match="pytorch_lora_weights.safetensors"):
        gen.load_lora(tmp_path)
    with pytest.raises(ValueError, match="add_lora"):
        gen.save_lora(tmp_path / "x")
    from safetensors.torch import save_file

    (tmp_path / "te_only").mkdir()
    save_file({"text_encoder.layers.0.q_proj.lora_A.weight": torch.zeros(2, 16)},
              str(tmp_path / "te_only" / "pytorch_lora_weights.safetensors"))
    with pytest.raises(ValueError, match=r"no LoRA weights for the 'unet' component.*text_encoder"):
        gen.load_lora(tmp_path / "te_only")


def test_loading_options(dirs):
    plain = load_generator(dirs / "sd")
    gen = load_generator(dirs / "sd", dtype="fp32", vae_slicing=True, vae_tiling=True, gradient_checkpointing=True,
                         attention="auto")
    assert gen.pipe.vae.use_slicing and gen.pipe.vae.use_tiling and gen.denoiser.is_gradient_checkpointing
    assert gen.pipe.rewardflow_attention == "sdpa"  # no CUDA / xformers here
    assert not any(p.requires_grad for p in gen.pipe.text_encoder.parameters())
    assert not any(p.requires_grad for p in gen.pipe.vae.parameters())
    noise = _noise(gen)
    assert torch.allclose(gen.generate(PROMPTS, 2, noise=noise), plain.generate(PROMPTS, 2, noise=noise), atol=ATOL)
    with pytest.raises(ValueError, match="xformers"):
        load_generator(dirs / "sd", attention="xformers")
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        load_generator(dirs / "sd", dtype="fp8")


def test_sampler_substitution_is_said_once(dirs, tmp_path, monkeypatch, capsys):
    """A pipeline shipped with PNDM (SD 1.x) or Euler (Turbo) samples with DDIM here: one stderr line per process,
    naming both schedulers; a pipeline already on DDIM says nothing."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    from rewardflow.pipelines import loading

    monkeypatch.setattr(loading, "_NOTED", set())
    pndm = tmp_path / "sd_pndm"
    pipe = StableDiffusionPipeline.from_pretrained(str(dirs / "sd"))
    pipe.scheduler = PNDMScheduler.from_config(pipe.scheduler.config)
    pipe.save_pretrained(str(pndm))
    capsys.readouterr()
    load_generator(dirs / "sd")  # DDIM already
    assert "[rewardflow] sampler" not in capsys.readouterr().err
    for _ in range(2):
        gen = load_generator(pndm)
    assert type(gen.scheduler).__name__ == "DDIMScheduler"
    err = capsys.readouterr().err
    assert err.count("[rewardflow] sampler: the pipeline's PNDMScheduler is replaced by DDIMScheduler") == 1
    load_generator(dirs / "sd_turbo")
    assert "EulerDiscreteScheduler is replaced by DDIMScheduler" in capsys.readouterr().err
