"""Tiny random Stable Diffusion / SDXL pipelines built from the real diffusers and transformers classes.

For the tests and quick smoke runs: the official classes and ``model_index.json`` layout (``UNet2DConditionModel``,
``AutoencoderKL``, ``CLIPTextModel`` / ``CLIPTextModelWithProjection``, ``CLIPTokenizer``), tiny widths, random
weights, nothing downloaded (the tokenizer is written from a small vocabulary by
:func:`rewardflow.testing.tiny_flow.write_clip_tokenizer`).

    build_tiny_sd(out_dir)                                  # StableDiffusionPipeline, DDIM, epsilon
    build_tiny_sd(out_dir, prediction_type="v_prediction")  # SD 2.x-768-like
    build_tiny_sd(out_dir, turbo=True)                      # SD-Turbo-like: Euler, trailing spacing
    build_tiny_sdxl(out_dir)                                # StableDiffusionXLPipeline (two text encoders)
    build_tiny_sdxl(out_dir, turbo=True)                    # SDXL-Turbo-like: Euler ancestral, trailing
"""

from __future__ import annotations

import os
import tempfile

import torch

from rewardflow.testing.tiny_flow import write_clip_tokenizer

# official VAE scaling factors (vae/config.json of runwayml/stable-diffusion-v1-5 and stabilityai/sdxl-base-1.0)
SD_VAE_SCALING = 0.18215
SDXL_VAE_SCALING = 0.13025
CLIP_LEN = 16


def _tokenizer():
    from transformers import CLIPTokenizer  # lazy: transformers is a heavy import

    with tempfile.TemporaryDirectory() as tmp:
        write_clip_tokenizer(tmp, CLIP_LEN)
        return CLIPTokenizer.from_pretrained(tmp)


def _text_encoder(vocab: int, hidden: int, projection: int | None, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # lazy: heavy import

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=CLIP_LEN, projection_dim=projection or hidden,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_act="gelu")
    return (CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)).eval()


def _vae(scaling: float, seed: int):
    from diffusers import AutoencoderKL  # lazy: diffusers is a heavy import

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1,
                         latent_channels=4, norm_num_groups=4, sample_size=2 * 8, scaling_factor=scaling).eval()


def _unet(latent_size: int, cross_dim: int, seed: int, sdxl_pooled_dim: int | None = None):
    from diffusers import UNet2DConditionModel  # lazy: diffusers is a heavy import

    torch.manual_seed(seed)
    kw = {}
    if sdxl_pooled_dim is not None:  # SDXL's "text_time" added condition: 6 time ids x 8 + pooled projection
        kw = dict(addition_embed_type="text_time", addition_time_embed_dim=8,
                  projection_class_embeddings_input_dim=6 * 8 + sdxl_pooled_dim, use_linear_projection=True)
    unet = UNet2DConditionModel(sample_size=latent_size, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), norm_num_groups=8,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                cross_attention_dim=cross_dim, attention_head_dim=4, **kw).eval()
    # random (not zero) output layer, so the network's output depends on its input and conditioning
    with torch.no_grad():
        unet.conv_out.weight.normal_(0, 0.05)
    return unet


def _scheduler(prediction_type: str, turbo: bool, ancestral: bool = False):
    from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler  # lazy: heavy import

    # the scaled-linear training schedule of SD 1.x / 2.x / SDXL (scheduler/scheduler_config.json)
    common = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  prediction_type=prediction_type)
    if turbo:  # stabilityai/sd-turbo: EulerDiscreteScheduler, sdxl-turbo: EulerAncestral..., trailing spacing
        cls = EulerAncestralDiscreteScheduler if ancestral else EulerDiscreteScheduler
        return cls(timestep_spacing="trailing", **common)
    return DDIMScheduler(clip_sample=False, set_alpha_to_one=False, steps_offset=1, **common)


def build_tiny_sd(out_dir: str | os.PathLike | None = None, prediction_type: str = "epsilon", turbo: bool = False,
                  latent_size: int = 8, seed: int = 0):
    """A random ``StableDiffusionPipeline`` (images ``2 * latent_size`` pixels), saved when ``out_dir`` is set."""
    from diffusers import StableDiffusionPipeline  # lazy: diffusers is a heavy import

    tok = _tokenizer()
    pipe = StableDiffusionPipeline(vae=_vae(SD_VAE_SCALING, seed + 1), text_encoder=_text_encoder(len(tok), 16, None,
                                                                                                  seed + 2),
                                   tokenizer=tok, unet=_unet(latent_size, 16, seed),
                                   scheduler=_scheduler(prediction_type, turbo), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    if out_dir is not None:
        pipe.save_pretrained(str(out_dir))
    return pipe


def build_tiny_sdxl(out_dir: str | os.PathLike | None = None, latent_size: int = 8, turbo: bool = False,
                    force_zeros_for_empty_prompt: bool = True, seed: int = 0):
    """A random ``StableDiffusionXLPipeline``: CLIP-L stand-in (hidden 16) + CLIP-bigG stand-in with projection
    (hidden 16, pooled 16), cross-attention width 32. ``turbo``: SDXL-Turbo's Euler-ancestral trailing scheduler."""
    from diffusers import StableDiffusionXLPipeline  # lazy: diffusers is a heavy import

    tok = _tokenizer()
    te1 = _text_encoder(len(tok), 16, None, seed + 2)
    te2 = _text_encoder(len(tok), 16, 16, seed + 3)
    pipe = StableDiffusionXLPipeline(vae=_vae(SDXL_VAE_SCALING, seed + 1), text_encoder=te1, text_encoder_2=te2,
                                     tokenizer=tok, tokenizer_2=tok, unet=_unet(latent_size, 32, seed, 16),
                                     scheduler=_scheduler("epsilon", turbo, ancestral=True),
                                     force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)
    if out_dir is not None:
        pipe.save_pretrained(str(out_dir))
    return pipe
