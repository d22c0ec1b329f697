"""The epsilon (DDPM/DDIM) toy generator: trained by the same recipe, loaded through the same adapter."""

import json

import pytest
import torch

from rewardflow.toy.generator import ToyGenerator
from rewardflow.toy.pipeline import ToyFlowPipeline, build_scheduler
from rewardflow.toy.train import train_generator


def test_epsilon_scheduler_and_unknown_parametrization():
    s = build_scheduler("epsilon")
    assert type(s).__name__ == "DDIMScheduler" and s.config.prediction_type == "epsilon"
    assert s.config.timestep_spacing == "trailing" and s.config.set_alpha_to_one
    assert type(build_scheduler("flow")).__name__ == "FlowMatchEulerDiscreteScheduler"
    with pytest.raises(ValueError, match="parametrization"):
        build_scheduler("x0")


def test_train_epsilon_generator_writes_a_loadable_ddim_pipeline(tmp_path):
    meta = train_generator(tmp_path / "g", steps=3, batch=4, log_every=1, parametrization="epsilon",
                           save_every=2, warmup=1)
    assert meta["parametrization"] == "epsilon" and all(torch.isfinite(torch.tensor(r["loss"])) for r in meta["log"])
    saved = json.loads((tmp_path / "g" / "training.json").read_text())
    assert saved["steps"] == 3 and saved["planned_steps"] == 3
    gen = ToyGenerator.from_pretrained(tmp_path / "g")
    assert gen.parametrization == "epsilon" and type(gen.scheduler).__name__ == "DDIMScheduler"
    assert gen.timesteps(4).tolist() == [999.0, 749.0, 499.0, 249.0, -1.0]
    # the generic adapter reproduces the pipeline's own diffusers loop on the epsilon model too
    noise = torch.randn(2, *gen.latent_shape, generator=torch.Generator().manual_seed(0))
    a = gen.generate(["a red circle", "two blue squares"], 4, noise=noise)
    b = gen.pipe(["a red circle", "two blue squares"], num_inference_steps=4, latents=noise.clone())
    assert torch.allclose(a, b, atol=1e-5)


def test_init_from_a_flow_pipeline_switches_the_scheduler(tmp_path, tiny_pipe_dir):
    train_generator(tmp_path / "e", steps=1, batch=4, parametrization="epsilon", init_from=tiny_pipe_dir, warmup=1)
    pipe = ToyFlowPipeline.from_pretrained(str(tmp_path / "e"))
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert tuple(pipe.unet.config.block_out_channels) == (16, 32, 32)  # the tiny pipeline's weights were the start


def test_shipped_epsilon_generator_loads_through_the_registry():
    from rewardflow.pipelines.registry import load_generator
    from rewardflow.toy.assets import asset_path

    gen = load_generator(str(asset_path("generator_eps")))
    assert gen.parametrization == "epsilon" and gen.scheduler.config.prediction_type == "epsilon"
    assert gen.denoiser.dtype == torch.float32 and gen.latent_shape == (12, 16, 16)
    meta = json.loads((asset_path("generator_eps") / "training.json").read_text())
    assert meta["parametrization"] == "epsilon" and meta["steps"] >= 300


def test_eps_skip_denoiser_output_is_the_preconditioned_noise_prediction(tmp_path):
    # eps = sqrt(ab_t) F + sqrt(1 - ab_t) x_t with F the raw UNet output; saved in and restored from model_index.json
    pipe = ToyFlowPipeline.from_config_dict(width=16, channels=(16, 32, 32), parametrization="epsilon")
    assert pipe.config.eps_skip is True
    assert ToyFlowPipeline.from_config_dict(width=16, channels=(16, 32, 32)).config.eps_skip is False
    pipe.save_pretrained(str(tmp_path / "p"))
    pipe = ToyFlowPipeline.from_pretrained(str(tmp_path / "p"))
    assert pipe.config.eps_skip is True
    x = torch.randn(2, *pipe.latent_shape(), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([999, 10])
    emb = pipe.encode_prompt(["a red circle", "a blue square"], "cpu")
    with torch.no_grad():
        raw = pipe.unet(x, t, encoder_hidden_states=emb["encoder_hidden_states"], class_labels=emb["pooled"],
                        encoder_attention_mask=emb["encoder_attention_mask"]).sample
        out = pipe.denoise(x, t, emb)
    ab = pipe.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(out, ab.sqrt() * raw + (1 - ab).sqrt() * x, atol=1e-6)
    assert float(ab[0]) < 1e-4  # DDPM linear betas: almost no signal left at t = 999 (no brightness leak)


def test_shipped_epsilon_generator_draws_toy_scenes():
    # regression: with the SD scaled_linear betas and no skip the shipped model drew grey images (mean pixel 0.42)
    # and scored 0% on the oracle; the data are coloured shapes on black (mean pixel ~0.06)
    from rewardflow.toy.evaluation import eval_prompts, oracle_report
    from rewardflow.pipelines.registry import load_generator
    from rewardflow.toy.assets import asset_path

    gen = load_generator(str(asset_path("generator_eps")), guidance_scale=2.0)
    prompts = eval_prompts("train", 4, seed=0)
    noise = torch.randn(len(prompts), *gen.latent_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        images = gen.generate(prompts, 4, noise=noise)
    assert float(images.mean()) < 0.15
    assert oracle_report(images, prompts)["accuracy"] >= 0.15
