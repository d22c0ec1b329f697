"""Tiny random SD3 / FLUX.1 pipelines built from the real diffusers and transformers classes.

Used by the tests and by ``benchmarks/generator_memory.py``: the architecture is the official one (same classes,
same ``model_index.json`` layout, same tokenizer files), only the widths are tiny and the weights random. Nothing
is downloaded: the tokenizers are built from small vocabulary files written here.

    build_tiny_sd3(out_dir)                         # StableDiffusion3Pipeline (CLIP-L, CLIP-G, T5)
    build_tiny_flux(out_dir, guidance_embeds=True)  # FluxPipeline, "dev"-like (guidance embedding)
    build_tiny_flux(out_dir, guidance_embeds=False) # FluxPipeline, "schnell"-like
"""

from __future__ import annotations

import json
import os
import tempfile

import torch

# official VAE constants (vae/config.json of stabilityai/stable-diffusion-3-medium-diffusers and
# black-forest-labs/FLUX.1-dev): used so the tests exercise the scaling *and* shift factors
SD3_VAE_SCALING, SD3_VAE_SHIFT = 1.5305, 0.0609
FLUX_VAE_SCALING, FLUX_VAE_SHIFT = 0.3611, 0.1159

_WORDS = ("a", "an", "the", "red", "blue", "green", "circle", "square", "two", "cat", "dog", "photo", "of", "on")


def _byte_chars() -> list[str]:
    """The 256 printable characters byte-level BPE maps bytes to (GPT-2 / CLIP convention)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode  # lazy: transformers is a heavy import

    return list(bytes_to_unicode().values())


def write_clip_tokenizer(out_dir: str | os.PathLike, max_length: int = 16) -> None:
    """``vocab.json`` + ``merges.txt`` of a character-level byte-BPE CLIP tokenizer (no merges)."""
    from transformers import CLIPTokenizer  # lazy: transformers is a heavy import

    os.makedirs(out_dir, exist_ok=True)
    chars = _byte_chars()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    with open(os.path.join(out_dir, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(out_dir, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    tok = CLIPTokenizer(vocab=os.path.join(out_dir, "vocab.json"), merges=os.path.join(out_dir, "merges.txt"),
                        model_max_length=max_length)
    tok.save_pretrained(str(out_dir))


def write_t5_tokenizer(out_dir: str | os.PathLike) -> None:
    """A Unigram T5 tokenizer over a few words and the lowercase letters (``tokenizer.json``)."""
    from transformers import T5TokenizerFast  # lazy: transformers is a heavy import

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -1.0) for w in _WORDS]
    vocab += [(c, -3.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    T5TokenizerFast(vocab=vocab, extra_ids=0).save_pretrained(str(out_dir))


def _clip_text(vocab_size: int, hidden: int, proj: int | None, max_len: int, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # lazy: heavy import

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=max_len, projection_dim=proj or hidden,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_act="gelu")
    return (CLIPTextModelWithProjection(cfg) if proj else CLIPTextModel(cfg)).eval()


def _t5(vocab_size: int, d_model: int, seed: int):
    from transformers import T5Config, T5EncoderModel  # lazy: transformers is a heavy import

    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2,
                                   num_heads=4, relative_attention_num_buckets=8, decoder_start_token_id=0,
                                   pad_token_id=0, eos_token_id=1)).eval()


def _vae(latent_channels: int, scaling: float, shift: float, blocks: int, seed: int):
    from diffusers import AutoencoderKL  # lazy: diffusers is a heavy import

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * blocks,
                         up_block_types=("UpDecoderBlock2D",) * blocks, block_out_channels=(8,) * blocks,
                         layers_per_block=1, latent_channels=latent_channels, norm_num_groups=4,
                         scaling_factor=scaling, shift_factor=shift, use_quant_conv=False,
                         use_post_quant_conv=False).eval()


def _tokenizers(tmp: str, clip_len: int):
    from transformers import CLIPTokenizer, T5TokenizerFast  # lazy: transformers is a heavy import

    write_clip_tokenizer(os.path.join(tmp, "clip_tok"), clip_len)
    write_t5_tokenizer(os.path.join(tmp, "t5_tok"))
    clip = CLIPTokenizer.from_pretrained(os.path.join(tmp, "clip_tok"))
    t5 = T5TokenizerFast.from_pretrained(os.path.join(tmp, "t5_tok"))
    return clip, t5


def build_tiny_sd3(out_dir: str | os.PathLike | None = None, latent_size: int = 16, layers: int = 2,
                   head_dim: int = 8, heads: int = 4, shift: float = 3.0, seed: int = 0):
    """A random ``StableDiffusion3Pipeline``; images are ``2 * latent_size`` pixels (VAE factor 2).
    Saved with ``save_pretrained`` when ``out_dir`` is given. Returns the pipeline."""
    from diffusers import (  # lazy: diffusers is a heavy import
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    clip_len, t5_dim = 16, 32
    with tempfile.TemporaryDirectory() as tmp:
        clip_tok, t5_tok = _tokenizers(tmp, clip_len)
    te1 = _clip_text(len(clip_tok), 16, 16, clip_len, seed + 1)  # CLIP-L stand-in (hidden 16, projection 16)
    te2 = _clip_text(len(clip_tok), 16, 24, clip_len, seed + 2)  # CLIP-G stand-in (hidden 16, projection 24)
    te3 = _t5(len(t5_tok), t5_dim, seed + 3)
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(sample_size=latent_size, patch_size=2, in_channels=4, num_layers=layers,
                                        attention_head_dim=head_dim, num_attention_heads=heads,
                                        joint_attention_dim=t5_dim, caption_projection_dim=head_dim * heads,
                                        pooled_projection_dim=16 + 24, out_channels=4,
                                        pos_embed_max_size=max(latent_size // 2, 8)).eval()
    pipe = StableDiffusion3Pipeline(transformer=transformer,
                                    scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift),
                                    vae=_vae(4, SD3_VAE_SCALING, SD3_VAE_SHIFT, 2, seed + 4),
                                    text_encoder=te1, tokenizer=clip_tok, text_encoder_2=te2, tokenizer_2=clip_tok,
                                    text_encoder_3=te3, tokenizer_3=t5_tok)
    if out_dir is not None:
        pipe.save_pretrained(str(out_dir))
    return pipe


def build_tiny_flux(out_dir: str | os.PathLike | None = None, guidance_embeds: bool = True, latent_size: int = 16,
                    seed: int = 0):
    """A random ``FluxPipeline``: ``guidance_embeds=True`` is FLUX.1-dev-like (dynamic shifting, guidance
    embedding), ``False`` is FLUX.1-schnell-like (no guidance, shift 1). Images are ``2 * latent_size`` pixels."""
    from diffusers import (  # lazy: diffusers is a heavy import
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )

    clip_len, t5_dim = 16, 32
    with tempfile.TemporaryDirectory() as tmp:
        clip_tok, t5_tok = _tokenizers(tmp, clip_len)
    te1 = _clip_text(len(clip_tok), 16, None, clip_len, seed + 1)
    te2 = _t5(len(t5_tok), t5_dim, seed + 3)
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=t5_dim,
                                         pooled_projection_dim=16, guidance_embeds=guidance_embeds,
                                         axes_dims_rope=(4, 6, 6)).eval()
    # scheduler configs of FLUX.1-dev (dynamic shifting) and FLUX.1-schnell (shift 1, no dynamic shifting)
    if guidance_embeds:
        sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                                base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                                max_image_seq_len=4096)
    else:
        sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)
    pipe = FluxPipeline(scheduler=sched, vae=_vae(4, FLUX_VAE_SCALING, FLUX_VAE_SHIFT, 2, seed + 4),
                        text_encoder=te1, tokenizer=clip_tok, text_encoder_2=te2, tokenizer_2=t5_tok,
                        transformer=transformer)
    if out_dir is not None:
        pipe.save_pretrained(str(out_dir))
    return pipe
