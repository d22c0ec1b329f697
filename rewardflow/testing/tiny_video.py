"""Tiny random Wan 2.1 / CogVideoX / LTX-Video pipelines built from the real diffusers and transformers classes.

Used by ``tests/test_pipelines_video.py``: the architectures are the official ones (same classes, same
``model_index.json`` layout, same tokenizer files), only the widths are tiny and the weights random. Nothing is
downloaded: the T5 tokenizer is built from a small in-memory vocabulary (``_tiny_flow.write_t5_tokenizer``).

    build_tiny_wan(out_dir)                        # WanPipeline: UMT5, AutoencoderKLWan (x8 spatial, x4 temporal)
    build_tiny_cogvideox(out_dir)                  # CogVideoXPipeline: T5, AutoencoderKLCogVideoX (x4, x4), v-pred
    build_tiny_ltx(out_dir, decoder_causal=False)  # LTXPipeline: T5, AutoencoderKLLTXVideo (x4, x4)

Scheduler settings are those of the released checkpoints (``scheduler/scheduler_config.json`` of
Wan-AI/Wan2.1-T2V-1.3B-Diffusers, THUDM/CogVideoX-2b, Lightricks/LTX-Video).
"""

from __future__ import annotations

import os
import tempfile

import torch

from rewardflow.testing.tiny_flow import write_t5_tokenizer

TEXT_LEN = 16  # tokens; the tiny pipelines are called with max_sequence_length=TEXT_LEN


def _t5_tokenizer():
    from transformers import T5TokenizerFast  # lazy: transformers is a heavy import

    with tempfile.TemporaryDirectory() as tmp:
        write_t5_tokenizer(tmp)
        return T5TokenizerFast.from_pretrained(tmp)


def _t5_encoder(vocab_size: int, d_model: int, seed: int, umt5: bool = False):
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel  # lazy: heavy import

    torch.manual_seed(seed)
    kw = {"vocab_size": vocab_size, "d_model": d_model, "d_kv": 8, "d_ff": 2 * d_model, "num_layers": 2, "num_heads": 4,
              "relative_attention_num_buckets": 8, "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1}
    return (UMT5EncoderModel(UMT5Config(**kw)) if umt5 else T5EncoderModel(T5Config(**kw))).eval()


def _save(pipe, out_dir):
    if out_dir is not None:
        pipe.save_pretrained(str(out_dir))
    return pipe


def build_tiny_wan(out_dir: str | os.PathLike | None = None, seed: int = 0, unipc: bool = True):
    """A random ``WanPipeline`` (64 px = 8x8 latents, 9 frames = 3 latent frames). ``unipc``: ship the scheduler the
    released checkpoints use (``UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=3.0)``)."""
    from diffusers import (  # lazy: diffusers is a heavy import
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        UniPCMultistepScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )

    tok = _t5_tokenizer()
    te = _t5_encoder(len(tok), 32, seed + 1, umt5=True)
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                        in_channels=16, out_channels=16, text_dim=32, freq_dim=32, ffn_dim=32,
                                        num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                        rope_max_seq_len=32).eval()
    torch.manual_seed(seed + 2)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True]).eval()
    if unipc:
        sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
                                        num_train_timesteps=1000)
    else:
        sched = FlowMatchEulerDiscreteScheduler(shift=5.0)
    return _save(WanPipeline(tokenizer=tok, text_encoder=te, vae=vae, transformer=transformer, scheduler=sched),
                 out_dir)


def build_tiny_cogvideox(out_dir: str | os.PathLike | None = None, seed: int = 0):
    """A random ``CogVideoXPipeline`` (32 px = 8x8 latents with the x4 VAE; 17 frames = 5 latent frames; rotary
    embeddings), with the CogVideoX-2b scheduler (``CogVideoXDDIMScheduler``, v-prediction, zero-terminal-SNR, SNR shift 3, trailing)."""
    from diffusers import (  # lazy: diffusers is a heavy import
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )

    tok = _t5_tokenizer()
    te = _t5_encoder(len(tok), 16, seed + 1)
    torch.manual_seed(seed)
    transformer = CogVideoXTransformer3DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4,
                                              out_channels=4, time_embed_dim=4, text_embed_dim=16, num_layers=1,
                                              sample_width=8, sample_height=8, sample_frames=17, patch_size=2,
                                              temporal_compression_ratio=4, max_text_seq_length=TEXT_LEN,
                                              use_rotary_positional_embeddings=True).eval()
    torch.manual_seed(seed + 2)
    vae = AutoencoderKLCogVideoX(in_channels=3, out_channels=3, block_out_channels=(8, 8, 8), latent_channels=4,
                                 down_block_types=("CogVideoXDownBlock3D",) * 3,
                                 up_block_types=("CogVideoXUpBlock3D",) * 3,
                                 layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4).eval()
    sched = CogVideoXDDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   clip_sample=False, set_alpha_to_one=True, steps_offset=0,
                                   prediction_type="v_prediction", rescale_betas_zero_snr=True,
                                   snr_shift_scale=3.0, timestep_spacing="trailing")
    return _save(CogVideoXPipeline(tokenizer=tok, text_encoder=te, vae=vae, transformer=transformer,
                                   scheduler=sched), out_dir)


def build_tiny_ltx(out_dir: str | os.PathLike | None = None, seed: int = 0, decoder_causal: bool = False):
    """A random ``LTXPipeline`` (32 px = 8x8 latents, 9 frames = 3 latent frames; VAE x4 spatial, x4 temporal) with
    the LTX-Video scheduler (dynamic shift, ``shift_terminal=0.1``)."""
    from diffusers import (  # lazy: diffusers is a heavy import
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )

    tok = _t5_tokenizer()
    te = _t5_encoder(len(tok), 16, seed + 1)
    torch.manual_seed(seed)
    transformer = LTXVideoTransformer3DModel(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1,
                                             num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
                                             num_layers=1, caption_channels=16).eval()
    torch.manual_seed(seed + 2)
    vae = AutoencoderKLLTXVideo(in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
                                decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
                                decoder_layers_per_block=(1, 1, 1, 1, 1),
                                spatio_temporal_scaling=(True, True, False, False),
                                decoder_spatio_temporal_scaling=(True, True, False, False),
                                decoder_inject_noise=(False,) * 5, upsample_residual=(False,) * 4,
                                upsample_factor=(1,) * 4, timestep_conditioning=False, patch_size=1,
                                patch_size_t=1, encoder_causal=True, decoder_causal=decoder_causal).eval()
    with torch.no_grad():  # non-trivial latent statistics (buffers saved with the weights, as in LTX-Video)
        vae.latents_mean.copy_(torch.linspace(-0.3, 0.3, 8))
        vae.latents_std.copy_(torch.linspace(0.5, 1.5, 8))
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True,
                                            base_shift=0.95, max_shift=2.05, base_image_seq_len=1024,
                                            max_image_seq_len=4096, shift_terminal=0.1)
    return _save(LTXPipeline(scheduler=sched, vae=vae, text_encoder=te, tokenizer=tok, transformer=transformer),
                 out_dir)
