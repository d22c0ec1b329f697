"""Training timesteps through the scheduler's shift, the first SDE step's log-prob, guidance <= 1 = no CFG, the
Turbo / schnell adapters, generator options in one place, and trained weights (LoRA or full fine-tune) loaded
back, on tiny random pipelines of the real classes."""

import math

import numpy as np
import pytest
import torch

from rewardflow.pipelines.options import GeneratorOptions, accepted_options, load_generator_with_options
from rewardflow.pipelines.parametrization import shift_sigmas
from rewardflow.pipelines.registry import load_generator, resolve_adapter

PROMPTS = ["a red circle", "two blue squares"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    from rewardflow.testing.tiny_flow import build_tiny_flux, build_tiny_sd3
    from rewardflow.testing.tiny_sd import build_tiny_sd

    root = tmp_path_factory.mktemp("opts")
    build_tiny_sd3(root / "sd3")
    build_tiny_flux(root / "flux-dev", guidance_embeds=True)
    build_tiny_flux(root / "FLUX.1-schnell", guidance_embeds=False, seed=5)
    build_tiny_sd(root / "sd")
    build_tiny_sd(root / "my-sd-turbo", turbo=True, seed=2)
    return root


# ------------------------------------------------------------------------------------- training timesteps
def test_sd3_training_sigmas_follow_the_shift_3_formula(dirs):
    """flow_grpo train_sd3_dpo.py / diffusers train_dreambooth_lora_sd3.py: u ~ logit-normal(0, 1) looked up in the
    scheduler's shifted table, sigma = 3u / (1 + 2u): median shift(0.5) = 0.75 (sigmoid(randn) alone: 0.50)."""
    gen = load_generator(dirs / "sd3")
    assert gen.train_shift == 3.0
    t = gen.sample_t(20000, torch.Generator().manual_seed(0))
    u = torch.sigmoid(torch.randn(20000, generator=torch.Generator().manual_seed(0)))
    assert torch.allclose(t, 3 * u / (1 + 2 * u), atol=1e-7)  # the same draw, through the formula
    assert abs(float(t.median()) - 0.75) < 0.01
    assert abs(float(u.median()) - 0.50) < 0.01
    # and the formula is the scheduler's own table (FlowMatchEulerDiscreteScheduler init, static shift)
    from diffusers import FlowMatchEulerDiscreteScheduler

    table = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0).sigmas
    s = torch.linspace(1.0, 1e-3, 1000)
    assert torch.allclose(shift_sigmas(s, 3.0), table, atol=1e-6)
    # uniform draws are shifted too (diffusers' weighting_scheme "none"); explicit shift overrides
    tu = gen.sample_t(4, torch.Generator().manual_seed(1), dist="uniform")
    uu = torch.rand(4, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(tu, 3 * uu / (1 + 2 * uu), atol=1e-7)
    assert torch.allclose(gen.sample_t(4, torch.Generator().manual_seed(1), dist="uniform", shift=1.0), uu)
    with pytest.raises(ValueError, match="logit_normal"):
        gen.sample_t(2, dist="beta")


def test_flux_dev_training_sigmas_are_unshifted_as_diffusers_flux_script(dirs):
    """FLUX.1-dev's scheduler shifts dynamically: diffusers' train_dreambooth_lora_flux.py looks sigmas up in the
    unshifted init-time table (mu is only computed at sampling), so the training shift is 1."""
    dev = load_generator(dirs / "flux-dev")
    assert dev.scheduler.config.use_dynamic_shifting and dev.train_shift == 1.0
    t = dev.sample_t(5, torch.Generator().manual_seed(0))
    assert torch.allclose(t, torch.sigmoid(torch.randn(5, generator=torch.Generator().manual_seed(0))))


def test_diffusion_training_timesteps_unchanged(dirs):
    gen = load_generator(dirs / "sd")
    assert gen.train_shift == 1.0
    t = gen.sample_t(6, torch.Generator().manual_seed(0))
    assert torch.equal(t, torch.randint(0, 1000, (6,), generator=torch.Generator().manual_seed(0)).float())


# ------------------------------------------------------------------------------------- first-step log-prob
def test_log_prob_of_the_first_flow_step_defaults_to_the_grids_second_point(dirs):
    """At sigma = 1 the SDE's sqrt(t / (1 - t)) is infinite; flow_grpo uses sigma_max = sigmas[1]. log_prob with the
    default sigma_max=None equals the recorded log-prob (about -1, not -2e5)."""
    gen = load_generator(dirs / "sd3", guidance_scale=1.0)
    cond = gen.encode_prompts(PROMPTS)
    traj = gen.sample(cond, 4, sde=True, noise=gen.initial_noise(2, torch.Generator().manual_seed(0)),
                      generator=torch.Generator().manual_seed(1))
    grid = traj.timesteps
    assert float(grid[0]) == 1.0
    lp = gen.log_prob(traj.latents[0], traj.latents[1], grid[0], grid[1], cond, 0.7)
    explicit = gen.log_prob(traj.latents[0], traj.latents[1], grid[0], grid[1], cond, 0.7, sigma_max=float(grid[1]))
    assert torch.allclose(lp, traj.log_probs[:, 0], atol=1e-5) and torch.equal(lp, explicit)
    assert (lp > -10).all() and (lp < 5).all()
    # the step's std by hand: a * sqrt(1 / (1 - sigma_1)) * sqrt(sigma_0 - sigma_1)
    x = traj.latents[0]
    st = gen.step(gen.predict(x, grid[0], cond), x, grid[0], grid[1], noise_level=0.7)
    s1 = float(grid[1])
    assert float(st.std) == pytest.approx(0.7 * math.sqrt(1 / (1 - s1)) * math.sqrt(1 - s1), rel=1e-6)


# ------------------------------------------------------------------------------------- guidance
def test_guidance_at_most_one_is_one_conditional_forward(flow_gen):
    cond = flow_gen.encode_prompts(PROMPTS)
    x = flow_gen.initial_noise(2, torch.Generator().manual_seed(0))
    calls = []
    orig = flow_gen._forward
    flow_gen._forward = lambda *a: calls.append(a[0].shape[0]) or orig(*a)
    try:
        with torch.no_grad():
            outs = [flow_gen.predict(x, 0.5, cond, guidance_scale=g) for g in (0.0, 0.5, 1.0)]
    finally:
        flow_gen._forward = orig
    assert calls == [2, 2, 2]  # one pass on the prompts each, no [uncond, cond] doubling
    assert torch.equal(outs[0], outs[2]) and torch.equal(outs[1], outs[2])


def test_sample_guidance_0_and_1_write_identical_images(tmp_path):
    from PIL import Image

    from rewardflow.cli import main

    for g in ("0", "1"):
        assert main(["sample", "--model", "toy", "--prompt", "a red circle", "--steps", "2", "--guidance", g,
                     "--out", str(tmp_path / g)]) == 0
    a = np.asarray(Image.open(tmp_path / "0" / "00000_00.png"))
    b = np.asarray(Image.open(tmp_path / "1" / "00000_00.png"))
    assert np.array_equal(a, b)


def test_turbo_and_schnell_adapters_are_picked_by_name_and_default_to_no_guidance(dirs):
    assert resolve_adapter(dirs / "my-sd-turbo")["name"] == "sd-turbo"
    assert resolve_adapter(dirs / "sd")["name"] == "sd"
    assert resolve_adapter(dirs / "FLUX.1-schnell")["name"] == "flux-schnell"
    assert resolve_adapter(dirs / "flux-dev")["name"] == "flux"
    assert resolve_adapter(dirs / "my-sd-turbo", "sd")["name"] == "sd"  # --adapter wins
    turbo = load_generator(dirs / "my-sd-turbo")
    assert turbo.guidance_scale == 0.0 and turbo.run_defaults["steps"] == 1
    schnell = load_generator(dirs / "FLUX.1-schnell")
    assert schnell.max_sequence_length == 256 and schnell.run_defaults["steps"] == 4
    assert load_generator(dirs / "flux-dev").max_sequence_length == 512
    # Turbo's default (0: no guidance) gives the conditional model's images, as guidance 1 does
    cond = turbo.encode_prompts(PROMPTS)
    noise = turbo.initial_noise(2, torch.Generator().manual_seed(0))
    a = turbo.sample(cond, 1, noise=noise).final
    b = turbo.sample(cond, 1, noise=noise, guidance_scale=1.0).final
    c = turbo.sample(cond, 1, noise=noise, guidance_scale=3.0).final
    assert torch.equal(a, b) and (a - c).abs().max() > 1e-4


# ------------------------------------------------------------------------------------- options
def test_generator_options_reach_the_adapter(dirs):
    opts = GeneratorOptions(height=16, width=24, dtype="bf16", max_sequence_length=8, gradient_checkpointing=True,
                            vae_slicing=True, guidance_scale=2.0, device="cpu")
    gen = load_generator_with_options(dirs / "sd3", options=opts)
    assert (gen.height, gen.width, gen.max_sequence_length, gen.guidance_scale) == (16, 24, 8, 2.0)
    assert gen.latent_shape == (4, 8, 12)
    assert gen.dtype == torch.bfloat16 and gen.pipe.text_encoder.dtype == torch.bfloat16
    assert gen.denoiser.is_gradient_checkpointing and gen.pipe.vae.use_slicing
    # trainable LoRA weights stay float32 over the bf16 base weights, and the forward runs
    gen.add_lora(rank=2)
    train = [p for p in gen.denoiser.parameters() if p.requires_grad]
    assert train and all(p.dtype == torch.float32 for p in train)
    assert all(p.dtype == torch.bfloat16 for n, p in gen.denoiser.named_parameters() if "lora_" not in n)
    cond = gen.encode_prompts(PROMPTS[:1])
    out = gen.predict(gen.initial_noise(1), 0.5, cond)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_generator_options_refused_by_name(dirs):
    with pytest.raises(ValueError, match="'num_frames' is not supported by adapter 'sd3'"):
        GeneratorOptions(num_frames=9).load_kwargs(resolve_adapter(dirs / "sd3"))
    with pytest.raises(ValueError, match="'height' is not supported by adapter 'toy'"):
        GeneratorOptions(height=64).load_kwargs(resolve_adapter("toy"))
    with pytest.raises(ValueError, match="unknown dtype"):
        GeneratorOptions(dtype="fp8")
    with pytest.raises(ValueError, match="attention must be one of"):
        GeneratorOptions(attention="flash")
    assert "num_frames" in accepted_options(resolve_adapter("wan")) and \
        "max_sequence_length" not in accepted_options(resolve_adapter(dirs / "sd"))


# ------------------------------------------------------------------------------------- trained weights
def test_load_weights_takes_a_lora_or_a_full_finetune(dirs, tmp_path):
    gen = load_generator(dirs / "sd", guidance_scale=1.0)
    cond = gen.encode_prompts(PROMPTS)
    noise = gen.initial_noise(2, torch.Generator().manual_seed(0))
    base = gen.sample(cond, 2, noise=noise).final
    # full fine-tune: perturb the UNet, save it with save_pretrained, load into a fresh generator
    with torch.no_grad():
        gen.denoiser.conv_out.weight.add_(0.5)
    tuned = gen.sample(cond, 2, noise=noise).final
    folder = gen.save_denoiser(tmp_path / "final")
    assert folder.endswith("unet") and (tmp_path / "final" / "unet" / "config.json").is_file()
    for path in (tmp_path / "final", tmp_path / "final" / "unet"):
        fresh = load_generator(dirs / "sd", guidance_scale=1.0)
        assert fresh.load_weights(path) == "full"
        assert torch.allclose(fresh.sample(cond, 2, noise=noise).final, tuned, atol=1e-6)
        assert not any(p.requires_grad for p in fresh.denoiser.parameters())
    # the pipeline's from_pretrained takes the folder as its unet
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    pipe = StableDiffusionPipeline.from_pretrained(str(dirs / "sd"),
                                                   unet=UNet2DConditionModel.from_pretrained(folder))
    assert torch.equal(pipe.unet.conv_out.weight, gen.denoiser.conv_out.weight)
    # a LoRA folder and the LoRA file itself
    lg = load_generator(dirs / "sd", guidance_scale=1.0)
    lg.add_lora(rank=2)
    with torch.no_grad():
        for n, p in lg.denoiser.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    want = lg.sample(cond, 2, noise=noise).final
    lora_file = lg.save_lora(tmp_path / "lora")
    for path in (tmp_path / "lora", lora_file):
        fresh = load_generator(dirs / "sd", guidance_scale=1.0)
        assert fresh.load_weights(path) == "lora"
        got = fresh.sample(cond, 2, noise=noise).final
        assert torch.allclose(got, want, atol=1e-5) and (got - base).abs().max() > 1e-4
    with pytest.raises(ValueError, match="has LoRA adapters"):
        lg.save_denoiser(tmp_path / "x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither a LoRA"):
        load_generator(dirs / "sd").load_weights(tmp_path / "empty")
    other = load_generator(dirs / "sd3")
    with pytest.raises(ValueError, match="does not fit this model"):
        other.load_weights(tmp_path / "final" / "unet")


# ------------------------------------------------------------------------------------- the trainer and the commands
def test_trainer_keys_load_the_model_and_full_finetuning_keeps_fp32_master_weights(dirs, tmp_path):
    """height/width/dtype/max_sequence_length reach the adapter; with lora_rank 0 the trained transformer is fp32 over
    bf16 frozen text encoders and VAE; final/ holds trainable.safetensors and the save_pretrained folder, which the
    plain pipeline's from_pretrained takes."""
    from diffusers import SD3Transformer2DModel

    from rewardflow.align.trainer import Trainer, split_config
    from tests.trainer_utils import Brightness

    tcfg, mcfg = split_config({"method": "draft", "model": str(dirs / "sd3"), "height": 16, "width": 16,
                               "dtype": "bf16", "max_sequence_length": 8, "lora_rank": 0, "prompts": "toy:train",
                               "eval_prompts": "", "eval_at_start": False, "report_to": "none", "max_steps": 1,
                               "batch_size": 1, "sample_steps": 1, "output_dir": str(tmp_path), "resume": "never"})
    tr = Trainer(tcfg, mcfg, reward=Brightness())
    g = tr.gen
    assert (g.height, g.width, g.max_sequence_length) == (16, 16, 8)
    assert all(p.dtype == torch.float32 for p in tr.params) and len(tr.params) == len(list(g.denoiser.parameters()))
    assert g.pipe.text_encoder.dtype == torch.bfloat16 and g.pipe.vae.dtype == torch.bfloat16
    tr.train()
    final = tmp_path / "final"
    assert (final / "trainable.safetensors").is_file()
    t = SD3Transformer2DModel.from_pretrained(final / "transformer")
    assert torch.equal(t.proj_out.weight, g.denoiser.proj_out.weight.detach().cpu())


def test_noise_opt_takes_the_generator_flags_and_a_lora(dirs, tmp_path):
    import json

    from PIL import Image

    from rewardflow.cli import main
    from rewardflow.testing.tiny_rewards import write_hf_clip

    turbo = load_generator(dirs / "my-sd-turbo")
    turbo.add_lora(rank=2)
    lora = turbo.save_lora(tmp_path / "lora")
    clip = write_hf_clip(tmp_path / "clip", 64, 16)
    out = tmp_path / "reno"
    assert main(["noise-opt", "--model", str(dirs / "my-sd-turbo"), "--prompt", "a red cat", "--reward", "clip",
                 "--weights", f"clip={clip}", "--height", "24", "--width", "32", "--dtype", "fp32", "--lora", lora,
                 "--iterations", "2", "--device", "cpu", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["steps"] == 1 and len(s["per_prompt"]) == 1  # the sd-turbo adapter's one step
    img = next((out / "final").rglob("*.png"))
    assert Image.open(img).size == (32, 24)


def test_sample_takes_a_training_checkpoint_as_lora(tmp_path):
    from PIL import Image

    from rewardflow.cli import main

    run = tmp_path / "run"
    assert main(["train", "configs/toy/draft.yaml", f"output_dir={run}", "max_steps=2", "batch_size=2",
                 "sample_steps=2", "eval_prompts=", "report_to=none", "save_every=1"]) == 0
    ck = sorted((run / "checkpoints").glob("step_*"))[-1]
    assert (ck / "pytorch_lora_weights.safetensors").is_file()
    for lora in (ck, run / "final"):
        assert main(["sample", "--model", "toy", "--lora", str(lora), "--prompt", "a red circle", "--steps", "2",
                     "--out", str(tmp_path / lora.name)]) == 0
    assert main(["sample", "--model", "toy", "--prompt", "a red circle", "--steps", "2",
                 "--out", str(tmp_path / "base")]) == 0
    a, b = (np.asarray(Image.open(tmp_path / d / "00000_00.png")) for d in ("final", "base"))
    assert not np.array_equal(a, b)  # the trained LoRA changes the samples
