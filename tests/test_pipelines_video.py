"""Wan 2.1, CogVideoX and LTX-Video adapters on tiny random pipelines built from the real diffusers classes.

``WanTransformer3DModel`` / ``CogVideoXTransformer3DModel`` / ``LTXVideoTransformer3DModel`` with their VAEs
(``AutoencoderKLWan`` / ``AutoencoderKLCogVideoX`` / ``AutoencoderKLLTXVideo``), UMT5 / T5 encoders and a T5
tokenizer written locally are assembled into the real pipelines, saved with ``save_pretrained`` and loaded back
through ``load_generator``. Reference outputs come from the plain diffusers pipelines.

Sizes: 8x8 latents; Wan 64 px, CogVideoX / LTX 32 px; 9 frames (3 latent frames), CogVideoX 17 (5 latent frames,
so its chunked VAE has a prefix shorter than the clip).
"""

import pytest
import torch

from rewardflow.pipelines.registry import load_generator

PROMPTS = ["a red circle", "two blue squares"]
ATOL = 5e-5  # adapter vs pipeline: CFG batched differently (Wan) and fp32 timestep rounding; observed <= 5e-6

# family -> keyword arguments of both load_generator and the pipeline call
SPECS = {
    "wan": {"num_frames": 9, "height": 64, "width": 64, "guidance_scale": 5.0},
    "cogvideox": {"num_frames": 17, "height": 32, "width": 32, "guidance_scale": 6.0},
    "ltx": {"num_frames": 9, "height": 32, "width": 32, "guidance_scale": 3.0},
    "ltx_causal": {"num_frames": 9, "height": 32, "width": 32, "guidance_scale": 3.0},
}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    from rewardflow.testing import tiny_video as tv

    out = {}
    for name, build in (("wan", tv.build_tiny_wan), ("cogvideox", tv.build_tiny_cogvideox),
                        ("ltx", tv.build_tiny_ltx), ("ltx_causal", lambda d: tv.build_tiny_ltx(d, decoder_causal=True))):
        d = tmp_path_factory.mktemp(name)
        build(d)
        out[name] = d
    return out


def _gen(dirs, name):
    from rewardflow.testing.tiny_video import TEXT_LEN

    return load_generator(dirs[name], max_sequence_length=TEXT_LEN, **SPECS[name])


def _noise(gen, seed=0, batch=2):
    return torch.randn(batch, *gen.latent_shape, generator=torch.Generator().manual_seed(seed))


def _pipe(gen, pipe, noise, steps, output_type):
    """The plain diffusers pipeline on the same noise; latents returned in the adapter's layout."""
    from diffusers import LTXPipeline

    from rewardflow.testing.tiny_video import TEXT_LEN

    spec = SPECS[_family(gen)]
    ltx = isinstance(pipe, LTXPipeline)
    lat = pipe._pack_latents(noise, 1, 1) if ltx else noise.clone()
    out = pipe(PROMPTS, num_inference_steps=steps, latents=lat, output_type=output_type,
               max_sequence_length=TEXT_LEN, **spec).frames
    if ltx and output_type == "latent":
        _, f, h, w = gen.latent_shape
        out = pipe._unpack_latents(out, f, h, w, 1, 1)
    return out


def _family(gen):
    return {"WanGenerator": "wan", "CogVideoXGenerator": "cogvideox", "LTXGenerator": "ltx"}[type(gen).__name__]


def test_load_generator_picks_the_video_adapter(dirs):
    g = _gen(dirs, "wan")
    assert type(g).__name__ == "WanGenerator" and g.modality == "video" and g.parametrization == "flow"
    # the released Wan configs ship UniPC with flow sigmas; the adapter runs the Euler ODE of the same flow shift
    assert type(g.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler" and g.scheduler.config.shift == 3.0
    assert g.pipe.scheduler is g.scheduler
    assert g.latent_shape == (16, 3, 8, 8)  # (C, (9 - 1) // 4 + 1, 64 / 8, 64 / 8)
    c = _gen(dirs, "cogvideox")
    assert (type(c).__name__, c.parametrization, c.latent_shape) == ("CogVideoXGenerator", "v_prediction", (5, 4, 8, 8))
    lt = _gen(dirs, "ltx")
    assert (type(lt).__name__, lt.parametrization, lt.latent_shape) == ("LTXGenerator", "flow", (8, 3, 8, 8))


def test_bad_sizes_and_frames_are_refused(dirs):
    from rewardflow.testing.tiny_video import TEXT_LEN

    with pytest.raises(ValueError, match="num_frames - 1 must be a multiple of"):
        load_generator(dirs["wan"], num_frames=8, height=64, width=64, max_sequence_length=TEXT_LEN)
    with pytest.raises(ValueError, match="multiples of 16"):
        load_generator(dirs["wan"], num_frames=9, height=40, width=64, max_sequence_length=TEXT_LEN)
    g = _gen(dirs, "wan")
    z = _noise(g, batch=1)
    with pytest.raises(ValueError, match="out of range for a 9-frame video"):
        g.decode(z, frames=[9])
    with pytest.raises(ValueError, match="5-D latents"):
        g.decode(z[0])
    with pytest.raises(ValueError, match=r"T - 1 must be a multiple of 4"):
        g.encode(torch.rand(1, 8, 3, 64, 64))
    with pytest.raises(ValueError, match=r"\[B, T, 3, H, W\]"):
        g.encode(torch.rand(1, 3, 9, 64, 64))


@pytest.mark.parametrize("family,steps", [("wan", 3), ("cogvideox", 3), ("ltx", 3)])
def test_ode_sample_and_decode_equal_the_diffusers_pipeline(dirs, family, steps):
    g = _gen(dirs, family)
    noise = _noise(g)
    traj = g.sample(g.encode_prompts(PROMPTS), steps, noise=noise)
    # steps=3 does not divide 1000: CogVideoX's DDIM goes to t - 333, not to the next "trailing" grid point
    ref = _pipe(g, g.pipe, noise, steps, "latent")
    assert traj.final.shape == ref.shape
    torch.testing.assert_close(traj.final, ref, atol=ATOL, rtol=0)
    video = g.decode(traj.final)
    ref_video = _pipe(g, g.pipe, noise, steps, "pt")
    t = SPECS[family]["num_frames"]
    assert video.shape == (2, t, 3, g.height, g.width) == ref_video.shape
    assert 0 <= video.min() and video.max() <= 1
    torch.testing.assert_close(video, ref_video, atol=ATOL, rtol=0)


def _decoded_latent_frames(gen):
    """Record the number of latent frames each vae.decode call receives."""
    seen, vae = [], gen.pipe.vae
    orig = vae.decode

    def spy(z, *a, **k):
        seen.append(z.shape[2])
        return orig(z, *a, **k)

    vae.decode = spy
    return seen


@pytest.mark.parametrize("family,frames,prefix", [
    ("wan", [0], 1), ("wan", [4, 1], 2), ("wan", [5, 8], 3),               # causal, one latent frame at a time
    ("cogvideox", [0, 8], 3), ("cogvideox", [9], 5), ("cogvideox", [-1], 5),  # chunks [0, 3), [3, 5)
    ("ltx_causal", [0, 3], 2), ("ltx_causal", [4], 2),
    ("ltx", [0], 3),                                                        # non-causal decoder: full decode
])
def test_frame_subset_decode_equals_full_decode(dirs, family, frames, prefix):
    g = _gen(dirs, family)
    z = _noise(g, seed=1, batch=1) * 0.7
    full = g.decode(z)
    seen = _decoded_latent_frames(g)
    sub = g.decode(z, frames=frames)
    assert seen == [prefix]
    assert sub.shape == (1, len(frames), 3, g.height, g.width)
    torch.testing.assert_close(sub, full[:, frames], atol=1e-6, rtol=0)


@pytest.mark.parametrize("family,prefix,frames", [("cogvideox", 2, 5), ("ltx", 2, 5)])
def test_other_prefixes_would_not_be_exact(dirs, family, prefix, frames):
    """Why the prefix rules are what they are: CogVideoX's GroupNorm sees whole decode chunks (a 2-frame prefix of a
    5-frame latent is chunked differently), and the released LTX decoder is non-causal."""
    g = _gen(dirs, family)
    z = _noise(g, seed=1, batch=1) * 0.7
    full = g.decode(z)
    tdim = g._latent_time_dim()
    naive = (g._vae_decode(z.narrow(tdim, 0, prefix)).float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 1, 3, 4)
    assert (naive[:, :frames] - full[:, :frames]).abs().max() > 1e-3


@pytest.mark.parametrize("family", ["wan", "cogvideox", "ltx"])
def test_encode_is_the_inverse_normalization_of_decode(dirs, family):
    """decode(encode(v)) equals the raw VAE round trip: the latent (de)normalizations cancel exactly."""
    g = _gen(dirs, family)
    v = torch.rand(1, SPECS[family]["num_frames"], 3, g.height, g.width, generator=torch.Generator().manual_seed(3))
    z = g.encode(v)
    assert z.shape == (1, *g.latent_shape)
    vae = g.pipe.vae
    x = (v * 2 - 1).permute(0, 2, 1, 3, 4)
    raw_z = vae.encode(x).latent_dist.mode()
    kw = {"temb": torch.zeros(1)} if family == "ltx" and vae.config.timestep_conditioning else {}
    raw = ((vae.decode(raw_z, **kw).sample / 2 + 0.5).clamp(0, 1)).permute(0, 2, 1, 3, 4)
    torch.testing.assert_close(g.decode(z), raw, atol=2e-5, rtol=0)


def test_wan_decode_uses_latents_mean_and_std(dirs):
    g = _gen(dirs, "wan")
    z = _noise(g, seed=2, batch=1)
    cfg = g.pipe.vae.config
    mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1)
    # hand computation of WanPipeline's decode: latents / (1 / std) + mean
    raw = g.pipe.vae.decode(z / (1.0 / std) + mean).sample
    torch.testing.assert_close(g.decode(z), (raw / 2 + 0.5).clamp(0, 1).permute(0, 2, 1, 3, 4), atol=1e-6, rtol=0)


def _perturb_lora(gen, std=0.3):
    rng = torch.Generator().manual_seed(0)
    with torch.no_grad():  # make the adapters matter (peft initialises lora_B to zero)
        for n, p in gen.denoiser.named_parameters():
            if "lora_B" in n:
                p.normal_(0, std, generator=rng)


@pytest.mark.parametrize("family", ["wan", "cogvideox", "ltx"])
def test_gradients_flow_through_the_last_k_steps_only(dirs, family):
    g = _gen(dirs, family)
    g.add_lora(rank=2)
    _perturb_lora(g)
    g.enable_gradient_checkpointing()
    assert g.denoiser.is_gradient_checkpointing
    cond = g.encode_prompts(PROMPTS[:1])
    noise = _noise(g, batch=1)
    traj = g.sample(cond, 3, noise=noise, grad="last_k", k=1)
    assert traj.grad_steps == [2]
    params = [p for p in g.trainable_parameters()]
    assert params and all("lora_" in n for n, p in g.denoiser.named_parameters() if p.requires_grad)
    loss = g.decode(traj.final, frames=[0]).mean()
    grads = torch.autograd.grad(loss, params)
    assert sum(gr.abs().sum() for gr in grads) > 0
    # reference: the last step alone from the stored (detached) state gives the same gradient
    grid = traj.timesteps
    x = traj.latents[2]
    out = g.predict(x, grid[2], cond)
    last = g.step(out, x, grid[2], grid[3]).prev_sample
    torch.testing.assert_close(last, traj.final, atol=1e-6, rtol=0)
    ref = torch.autograd.grad(g.decode(last, frames=[0]).mean(), params)
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-4)
    # the gradient reaches the pixels' latents too
    z = traj.final.detach().requires_grad_(True)
    (gz,) = torch.autograd.grad(g.decode(z, frames=[0]).sum(), z)
    assert gz.abs().sum() > 0


@pytest.mark.parametrize("family", ["wan", "cogvideox", "ltx"])
def test_sde_log_probs_recorded_equal_recomputed(dirs, family):
    g = _gen(dirs, family)
    cond = g.encode_prompts(PROMPTS)
    gen = torch.Generator().manual_seed(4)
    traj = g.sample(cond, 3, sde=True, generator=gen)
    flow = g.parametrization == "flow"
    # every step is stochastic: DDIM's last stochastic step ends at alpha_bar[0] (ddpo-pytorch's clamp), not at the
    # set_alpha_to_one final alpha 1, which would have zero variance
    n = 3
    assert traj.log_probs.shape == (2, n) and torch.isfinite(traj.log_probs).all()
    level = 0.7 if flow else 1.0
    sigma_max = float(traj.timesteps[1]) if flow else None
    for i in range(n):
        lp = g.log_prob(traj.latents[i], traj.latents[i + 1], float(traj.timesteps[i]),
                        float(traj.timesteps[i + 1]), cond, level, sigma_max=sigma_max)
        torch.testing.assert_close(lp, traj.log_probs[:, i], atol=1e-4, rtol=0)
    # a transition that was not drawn from the policy is less likely than the recorded one
    fake = traj.latents[1] + 0.5 * torch.randn_like(traj.latents[1])
    lp_fake = g.log_prob(traj.latents[0], fake, float(traj.timesteps[0]), float(traj.timesteps[1]), cond, level,
                         sigma_max=sigma_max)
    assert (lp_fake < traj.log_probs[:, 0]).all()


@pytest.mark.parametrize("family", ["wan", "cogvideox", "ltx"])
def test_lora_round_trip_through_plain_diffusers(dirs, family, tmp_path):
    import diffusers

    g = _gen(dirs, family)
    noise = _noise(g)
    base = g.sample(g.encode_prompts(PROMPTS), 2, noise=noise).final
    g.add_lora(rank=4)
    _perturb_lora(g)
    ours = g.sample(g.encode_prompts(PROMPTS), 2, noise=noise).final
    assert (ours - base).abs().max() > 1e-3  # the LoRA changes the output
    path = g.save_lora(tmp_path / "lora")
    assert path.endswith("pytorch_lora_weights.safetensors")
    # plain diffusers: the same pipeline class, load_lora_weights(dir)
    pipe = getattr(diffusers, g.pipeline_class).from_pretrained(str(dirs[family]))
    pipe.load_lora_weights(str(tmp_path / "lora"))
    if family == "wan":  # the adapter's ODE (Euler on the checkpoint's flow shift), see WanGenerator
        from rewardflow.pipelines.wan import flow_euler_from

        pipe.scheduler = flow_euler_from(pipe.scheduler)
    theirs = _pipe(g, pipe, noise, 2, "latent")
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)
    # and back into a fresh adapter
    g2 = _gen(dirs, family)
    g2.load_lora(tmp_path / "lora")
    torch.testing.assert_close(g2.sample(g2.encode_prompts(PROMPTS), 2, noise=noise).final, ours, atol=1e-6, rtol=0)


def test_editing_mode_runs_the_tail_of_the_chain(dirs):
    """InstructVideo / SDEdit: encode a video, noise it to t0 = 0.5 of a 4-step chain, run the last 2 steps."""
    g = _gen(dirs, "wan")
    v = torch.rand(1, 9, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    x0 = g.encode(v)
    noise = _noise(g, batch=1)
    traj = g.sample(g.encode_prompts(PROMPTS[:1]), 4, noise=noise, x0=x0, t0=0.5)
    grid = g.timesteps(4)
    assert traj.num_steps == 2
    torch.testing.assert_close(traj.timesteps, grid[2:])
    s = grid[2]
    torch.testing.assert_close(traj.latents[0], (1 - s) * x0 + s * noise, atol=1e-6, rtol=0)
