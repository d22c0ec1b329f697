"""Tiny random-weight reward models of the real architectures, saved in the official file formats.

For the tests and ``benchmarks/reward_throughput.py``: each builder writes what the official release ships, so the
files load through the real loaders (:func:`rewardflow.rewards.base.load_reward`); nothing is downloaded.

    name = register_tiny_open_clip(tmp)                    # an open_clip config (ViT, real BPE tokenizer)
    write_open_clip_checkpoint(tmp / "clip.pt", name)      # clip / clipscore / vlm_rm / aesthetic backbone
    write_hps_checkpoints(tmp / "hps", name)               # HPS_v2_compressed.pt + HPS_v2.1_compressed.pt
    write_hf_clip(tmp / "pickscore")                       # transformers CLIPModel + tokenizer + image processor
    write_imagereward(tmp / "ir")                          # ImageReward.pt + med_config.json + vocab.txt
    write_aesthetic_head(tmp / "sac+logos+ava1-l14-linearMSE.pth", 32)
    write_videoreward(tmp / "videoreward")                 # VideoAlign layout + a tiny Qwen2-VL base

The default input resolution is the real one (224), so the official geometry (short side -> 224, pad to 224, ...)
is exercised as with the released checkpoints.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

TINY_OPEN_CLIP = "rf-tiny-clip-224"
BERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "blue", "green", "cat", "dog", "photo", "of",
              "the", "on", "grass", "sky", "circle", "square", "triangle", "two", "left"]


# ---------------------------------------------------------------------------------------------------- open_clip
def register_tiny_open_clip(config_dir: str | os.PathLike, name: str = TINY_OPEN_CLIP, image_size: int = 224,
                            patch_size: int = 32, width: int = 64, embed_dim: int = 32) -> str:
    """Write and register an open_clip model config (2-layer ViT, 2-layer text tower with the real 49408-token BPE
    vocabulary); returns its name for ``open_clip.create_model`` / ``load_reward(..., model=name)``."""
    import open_clip

    cfg = {"embed_dim": embed_dim,
           "vision_cfg": {"image_size": image_size, "layers": 2, "width": width, "head_width": 32,
                          "patch_size": patch_size},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
    Path(config_dir).mkdir(parents=True, exist_ok=True)
    (Path(config_dir) / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(str(config_dir))
    return name


def random_open_clip(name: str, seed: int = 0):
    """An open_clip model with every parameter perturbed (open_clip zero-inits some projections)."""
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.create_model(name).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def write_open_clip_checkpoint(path: str | os.PathLike, name: str, seed: int = 0) -> Path:
    """An open_clip checkpoint file ``{"state_dict": ...}`` (what open_clip's own loader accepts)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": random_open_clip(name, seed).state_dict()}, path)
    return path


def write_hps_checkpoints(out_dir: str | os.PathLike, name: str, seed: int = 10) -> Path:
    """Both HPS releases as the hub ships them: fp16 tensors under ``state_dict`` (seeds ``seed``, ``seed + 1``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for i, fname in enumerate(("HPS_v2_compressed.pt", "HPS_v2.1_compressed.pt")):
        sd = {k: v.half() for k, v in random_open_clip(name, seed + i).state_dict().items()}
        torch.save({"state_dict": sd}, out / fname)
    return out


# ---------------------------------------------------------------------------------------------------- transformers
def write_hf_clip(out_dir: str | os.PathLike, image_size: int = 224, patch_size: int = 32, seed: int = 0) -> Path:
    """A transformers ``CLIPModel`` + ``CLIPTokenizer`` (byte-level BPE without merges) + ``CLIPImageProcessor``
    (shortest edge ``image_size``, centre crop, OpenAI mean/std) in one ``save_pretrained`` directory: the layout
    of ``yuvalkirstain/PickScore_v1`` with its laion processor."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    vocab.update({c: i + 2 for i, c in enumerate(alphabet)})
    vocab.update({c + "</w>": i + 2 + len(alphabet) for i, c in enumerate(alphabet)})
    tok = CLIPTokenizer(vocab=vocab, merges=[])
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=patch_size),
        projection_dim=16, logit_scale_init_value=3.0)
    torch.manual_seed(seed)
    model = CLIPModel(cfg).eval()
    out = Path(out_dir)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": image_size},
                       crop_size={"height": image_size, "width": image_size}).save_pretrained(out)
    return out


# ---------------------------------------------------------------------------------------------------- ImageReward
def _linear(sd, name, n_out, n_in, g):
    sd[f"{name}.weight"] = torch.randn(n_out, n_in, generator=g) / math.sqrt(n_in)
    sd[f"{name}.bias"] = 0.1 * torch.randn(n_out, generator=g)


def _norm(sd, name, n, g):
    sd[f"{name}.weight"] = 1.0 + 0.1 * torch.randn(n, generator=g)
    sd[f"{name}.bias"] = 0.1 * torch.randn(n, generator=g)


def mlp_head_state_dict(n_in: int, seed: int = 0, prefix: str = "") -> dict[str, torch.Tensor]:
    """The 5 linear layers (``layers.0/2/4/6/7``) of the ImageReward / LAION aesthetic MLP head."""
    g, sd = torch.Generator().manual_seed(seed), {}
    for idx, (o, i) in zip((0, 2, 4, 6, 7), ((1024, n_in), (128, 1024), (64, 128), (16, 64), (1, 16))):
        _linear(sd, f"{prefix}layers.{idx}", o, i, g)
    return sd


def imagereward_state_dict(seed: int = 0, vision_width: int = 128, vision_depth: int = 2, patch_size: int = 32,
                           image_size: int = 224, text_hidden: int = 32, text_layers: int = 2,
                           text_intermediate: int = 64, text_positions: int = 40,
                           vocab_size: int = len(BERT_VOCAB) + 2) -> dict[str, torch.Tensor]:
    """Random tensors under the names of THUDM/ImageReward's ``ImageReward.pt`` (BLIP_Pretrain + MLP): BLIP's timm
    ViT (``blip.visual_encoder.*``), the med BERT with a cross-attention block per layer (``blip.text_encoder.*``),
    the unused ITC projections and the head (``mlp.layers.*``). ``vocab_size`` counts BLIP's [DEC] and [ENC]."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    v, w = "blip.visual_encoder.", vision_width
    n_tok = (image_size // patch_size) ** 2 + 1
    sd[v + "cls_token"] = 0.5 * torch.randn(1, 1, w, generator=g)
    sd[v + "pos_embed"] = 0.5 * torch.randn(1, n_tok, w, generator=g)
    sd[v + "patch_embed.proj.weight"] = torch.randn(w, 3, patch_size, patch_size, generator=g) / (
        patch_size * math.sqrt(3))
    sd[v + "patch_embed.proj.bias"] = 0.1 * torch.randn(w, generator=g)
    for i in range(vision_depth):
        b = f"{v}blocks.{i}."
        _norm(sd, b + "norm1", w, g)
        _linear(sd, b + "attn.qkv", 3 * w, w, g)
        _linear(sd, b + "attn.proj", w, w, g)
        _norm(sd, b + "norm2", w, g)
        _linear(sd, b + "mlp.fc1", 4 * w, w, g)
        _linear(sd, b + "mlp.fc2", w, 4 * w, g)
    _norm(sd, v + "norm", w, g)
    t, h = "blip.text_encoder.", text_hidden
    sd[t + "embeddings.word_embeddings.weight"] = torch.randn(vocab_size, h, generator=g)
    sd[t + "embeddings.position_embeddings.weight"] = torch.randn(text_positions, h, generator=g)
    sd[t + "embeddings.position_ids"] = torch.arange(text_positions).unsqueeze(0)  # a persistent buffer in med.py
    _norm(sd, t + "embeddings.LayerNorm", h, g)
    for i in range(text_layers):
        b = f"{t}encoder.layer.{i}."
        for blk, kv_in in (("attention", h), ("crossattention", w)):
            _linear(sd, f"{b}{blk}.self.query", h, h, g)
            _linear(sd, f"{b}{blk}.self.key", h, kv_in, g)
            _linear(sd, f"{b}{blk}.self.value", h, kv_in, g)
            _linear(sd, f"{b}{blk}.output.dense", h, h, g)
            _norm(sd, f"{b}{blk}.output.LayerNorm", h, g)
        _linear(sd, b + "intermediate.dense", text_intermediate, h, g)
        _linear(sd, b + "output.dense", h, text_intermediate, g)
        _norm(sd, b + "output.LayerNorm", h, g)
    _linear(sd, "blip.vision_proj", 256, w, g)  # ITC projections: in the file, unused by the reward
    _linear(sd, "blip.text_proj", 256, h, g)
    sd.update(mlp_head_state_dict(h, seed + 1, prefix="mlp."))
    return sd


def imagereward_med_config(text_hidden: int = 32, text_layers: int = 2, text_heads: int = 2,
                           text_intermediate: int = 64, text_positions: int = 40,
                           vocab_size: int = len(BERT_VOCAB) + 2) -> dict:
    """BLIP ``configs/med_config.json`` keys at tiny sizes."""
    return {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1, "hidden_size": text_hidden, "initializer_range": 0.02,
            "intermediate_size": text_intermediate, "layer_norm_eps": 1e-12, "max_position_embeddings": text_positions,
            "model_type": "bert", "num_attention_heads": text_heads, "num_hidden_layers": text_layers,
            "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": vocab_size, "encoder_width": 768,
            "add_cross_attention": True}


def write_bert_vocab(out_dir: str | os.PathLike, words: list[str] = BERT_VOCAB) -> Path:
    """A WordPiece ``vocab.txt`` (loaded by ``BertTokenizer``, as BLIP's ``init_tokenizer``)."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "vocab.txt").write_text("\n".join(words) + "\n")
    return Path(out_dir)


def write_imagereward(out_dir: str | os.PathLike, seed: int = 0, **sizes) -> Path:
    """``ImageReward.pt`` + ``med_config.json`` (the hub ``THUDM/ImageReward`` files) + a ``vocab.txt`` next to
    them (the loader's offline tokenizer); ``sizes`` as :func:`imagereward_state_dict`."""
    out = write_bert_vocab(out_dir)
    torch.save(imagereward_state_dict(seed, **sizes), out / "ImageReward.pt")
    text = {k: sizes[k] for k in ("text_hidden", "text_layers", "text_intermediate", "text_positions", "vocab_size")
            if k in sizes}
    (out / "med_config.json").write_text(json.dumps(imagereward_med_config(**text)))
    return out


# ---------------------------------------------------------------------------------------------------- aesthetic
def write_aesthetic_head(path: str | os.PathLike, n_in: int, seed: int = 1) -> Path:
    """``sac+logos+ava1-l14-linearMSE.pth`` layout: a plain state dict ``layers.{0,2,4,6,7}.{weight,bias}``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(mlp_head_state_dict(n_in, seed), path)
    return path


# ---------------------------------------------------------------------------------------------------- VideoReward
QWEN2VL_SPECIALS = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                    "<|video_pad|>", "<|image_pad|>"]
QWEN2VL_WORDS = ["system", "user", "assistant", "You", "are", "a", "helpful", "red", "circle", "moving", "left",
                 "Video", "Quality", "Motion", "Text", "Alignment", "END", ":", "-", "prompt", "Please"]


def tiny_qwen2vl_tokenizer():
    """A word-level tokenizer with Qwen2-VL's special tokens (unknown words map to ``<unk>``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(QWEN2VL_SPECIALS + QWEN2VL_WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    t = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>")
    t.add_special_tokens({"additional_special_tokens": QWEN2VL_SPECIALS[2:]})
    return t


def tiny_qwen2vl(tok, seed: int = 0):
    """A random 2-layer ``Qwen2VLForConditionalGeneration`` (hidden 32, vision patch 14, merge 2) for ``tok``."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    ids = tok.convert_tokens_to_ids
    cfg = Qwen2VLConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tok), bos_token_id=None, eos_token_id=None,
                         pad_token_id=0, rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1],
                                                          "rope_theta": 10000.0}),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=32, num_heads=4, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
    torch.manual_seed(seed)
    return Qwen2VLForConditionalGeneration(cfg).eval()


def write_videoreward(out_dir: str | os.PathLike, seed: int = 0, max_frame_pixels: int = 56 * 56) -> Path:
    """The VideoAlign checkpoint layout (``git clone KwaiVGI/VideoReward``): ``model_config.json`` (data, model and
    inference configs) + ``checkpoint-1/non_lora_state_dict.safetensors`` (a random ``rm_head``), with a tiny random
    Qwen2-VL saved as the base model in ``OUT/base``. Returns ``OUT``, the reward's ``path``."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    tok = tiny_qwen2vl_tokenizer()
    base = tiny_qwen2vl(tok, seed)
    base.save_pretrained(out / "base")
    tok.save_pretrained(out / "base")
    ckpt = out / "checkpoint-1"
    ckpt.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    save_file({"rm_head.weight": torch.randn(1, base.config.text_config.hidden_size, generator=g)},
              str(ckpt / "non_lora_state_dict.safetensors"))
    (out / "model_config.json").write_text(json.dumps({
        "data_config": {"fps": 2.0, "num_frames": None, "max_frame_pixels": max_frame_pixels,
                        "eval_dim": ["VQ", "MQ", "TA"], "prompt_template_type": "detailed_special",
                        "sample_type": "uniform"},
        "model_config": {"model_name_or_path": str(out / "base"), "output_dim": 1, "reward_token": "special"},
        "inference_config": {"VQ_mean": 0.0, "VQ_std": 1.0, "MQ_mean": 0.0, "MQ_std": 1.0, "TA_mean": 0.0,
                             "TA_std": 1.0}}))
    return out
