"""ImageReward and the LAION aesthetic predictor.

Each checkpoint is written in the official format with the official key names (``ImageReward.pt`` +
``med_config.json``; ``sac+logos+ava1-l14-linearMSE.pth``) from tiny random tensors, loaded through the real
loaders, and the score is recomputed independently: for ImageReward by a plain-torch forward of BLIP's ViT and
med-BERT that reads the *official* tensor names (so the rename table is checked, not assumed).
"""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from rewardflow.testing.tiny_rewards import imagereward_med_config, imagereward_state_dict, mlp_head_state_dict
from rewardflow.rewards.base import load_reward, reward_info
from rewardflow.rewards.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_preprocess

IR_MEAN, IR_STD = 0.16717362830052426, 1.0333394966054072  # ImageReward/ImageReward.py
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "blue", "cat", "dog", "photo", "of", "the", "on",
         "grass", "sky"]
# tiny BLIP: ViT width 128 (2 heads of 64 by the width/64 rule), 2 blocks, patch 16 on 32 px; med BERT width 32
V_W, V_DEPTH, PATCH, IMG = 128, 2, 16, 32
T_H, T_LAYERS, T_HEADS, T_INTER, T_POS = 32, 2, 2, 64, 40
T_VOCAB = len(VOCAB) + 2  # + BLIP's [DEC] and [ENC]


# ------------------------------------------------------------------------------------------------------------
# official-format files (rewardflow.testing.tiny_rewards)
# ------------------------------------------------------------------------------------------------------------
SIZES = dict(vision_width=V_W, vision_depth=V_DEPTH, patch_size=PATCH, image_size=IMG, text_hidden=T_H,
             text_layers=T_LAYERS, text_intermediate=T_INTER, text_positions=T_POS, vocab_size=T_VOCAB)


def official_imagereward_state_dict(seed=0):
    return imagereward_state_dict(seed, **SIZES)


def med_config():
    return imagereward_med_config(T_H, T_LAYERS, T_HEADS, T_INTER, T_POS, T_VOCAB)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("bert_tok")
    (d / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return d


@pytest.fixture(scope="module")
def ir_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("imagereward")
    sd = official_imagereward_state_dict()
    torch.save(sd, d / "ImageReward.pt")
    (d / "med_config.json").write_text(json.dumps(med_config()))
    return d, sd


@pytest.fixture(scope="module")
def ir_reward(ir_dir, tokenizer_dir):
    return load_reward("imagereward", path=str(ir_dir[0]), tokenizer=str(tokenizer_dir))


# ------------------------------------------------------------------------------------------------------------
# independent reference: BLIP ViT + med BERT in plain torch, reading the official names
# ------------------------------------------------------------------------------------------------------------
def _mha(q, k, v, heads, mask=None):
    (b, n, c), m = q.shape, k.shape[1]
    q, k, v = (t.reshape(b, -1, heads, c // heads).transpose(1, 2) for t in (q, k, v))
    att = q @ k.transpose(-1, -2) / math.sqrt(c // heads)
    if mask is not None:
        att = att.masked_fill(~mask[:, None, None, :m].bool(), float("-inf"))
    return (att.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c)


def ref_blip_vit(sd, x, heads=V_W // 64):
    p = "blip.visual_encoder."
    lin = lambda t, n: F.linear(t, sd[n + ".weight"], sd[n + ".bias"])  # noqa: E731
    ln = lambda t, n: F.layer_norm(t, t.shape[-1:], sd[n + ".weight"], sd[n + ".bias"], 1e-6)  # noqa: E731
    t = F.conv2d(x, sd[p + "patch_embed.proj.weight"], sd[p + "patch_embed.proj.bias"], stride=PATCH)
    t = torch.cat([sd[p + "cls_token"].expand(x.shape[0], -1, -1), t.flatten(2).transpose(1, 2)], 1)
    t = t + sd[p + "pos_embed"]
    for i in range(V_DEPTH):
        b = f"{p}blocks.{i}."
        h = ln(t, b + "norm1")
        q, k, v = lin(h, b + "attn.qkv").chunk(3, dim=-1)
        t = t + lin(_mha(q, k, v, heads), b + "attn.proj")
        t = t + lin(F.gelu(lin(ln(t, b + "norm2"), b + "mlp.fc1")), b + "mlp.fc2")
    return ln(t, p + "norm")


def ref_med_bert_cls(sd, ids, image_embeds):
    """[CLS] of BLIP's med BertModel in multimodal mode on *unpadded* ids (no attention mask needed)."""
    p = "blip.text_encoder."
    lin = lambda t, n: F.linear(t, sd[n + ".weight"], sd[n + ".bias"])  # noqa: E731
    ln = lambda t, n: F.layer_norm(t, t.shape[-1:], sd[n + ".weight"], sd[n + ".bias"], 1e-12)  # noqa: E731
    pos = sd[p + "embeddings.position_embeddings.weight"][:ids.shape[1]]  # absolute positions, no token types
    t = sd[p + "embeddings.word_embeddings.weight"][ids] + pos
    t = ln(t, p + "embeddings.LayerNorm")
    for i in range(T_LAYERS):
        b = f"{p}encoder.layer.{i}."
        for blk, kv in (("attention", None), ("crossattention", image_embeds)):
            src = t if kv is None else kv
            a = _mha(lin(t, f"{b}{blk}.self.query"), lin(src, f"{b}{blk}.self.key"), lin(src, f"{b}{blk}.self.value"),
                     T_HEADS)
            t = ln(lin(a, f"{b}{blk}.output.dense") + t, f"{b}{blk}.output.LayerNorm")
        t = ln(lin(F.gelu(lin(t, b + "intermediate.dense")), b + "output.dense") + t, b + "output.LayerNorm")
    return t[:, 0]


def ref_head(sd, prefix, feats):
    for idx in (0, 2, 4, 6, 7):  # dropouts are identity in eval; no activations
        feats = F.linear(feats, sd[f"{prefix}layers.{idx}.weight"], sd[f"{prefix}layers.{idx}.bias"])
    return feats.squeeze(-1)


def _ids(prompt):
    return torch.tensor([[VOCAB.index("[CLS]")] + [VOCAB.index(w) for w in prompt.split()] + [VOCAB.index("[SEP]")]])


def _images(seed, b=2, h=48, w=40):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g)


# ------------------------------------------------------------------------------------------------------------
# ImageReward
# ------------------------------------------------------------------------------------------------------------
def test_imagereward_registered():
    info = {r["name"]: r for r in reward_info()}
    assert info["imagereward"]["differentiable"] and info["imagereward"]["modality"] == "image"
    assert info["aesthetic"]["differentiable"] and info["aesthetic"]["modality"] == "image"


def test_imagereward_tokenization_official(ir_reward):
    ids, mask = ir_reward.tokenize(["a red cat", "the dog on grass"])
    assert ids.shape == mask.shape == (2, 35)  # padding="max_length", max_length=35
    assert ids[0, :5].tolist() == _ids("a red cat")[0].tolist() and ids[0, 5:].eq(0).all()
    assert mask[0].tolist() == [1] * 5 + [0] * 30 and mask[1].sum() == 6
    long_ids, long_mask = ir_reward.tokenize(["a " * 60])
    assert long_ids.shape == (1, 35) and long_mask.all() and long_ids[0, -1] == VOCAB.index("[SEP]")  # truncation
    assert "a red cat" in ir_reward._token_cache  # tokens cached per prompt
    tok = ir_reward.tokenizer
    assert tok.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [len(VOCAB), len(VOCAB) + 1]  # BLIP init_tokenizer


def test_imagereward_score_matches_independent_blip(ir_reward, ir_dir):
    sd = ir_dir[1]
    prompts = ["a red cat", "the dog on grass"]
    images = _images(0)
    got = ir_reward(images, prompts)
    pixels = clip_preprocess(images, IMG, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, mode="crop")
    with torch.no_grad():
        emb = ref_blip_vit(sd, pixels)
        cls = torch.cat([ref_med_bert_cls(sd, _ids(p), emb[i:i + 1]) for i, p in enumerate(prompts)])
        want = (ref_head(sd, "mlp.", cls) - IR_MEAN) / IR_STD
    assert got.dtype == torch.float32 and got.shape == (2,)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert (got[0] - got[1]).abs() > 1e-3  # the scores depend on the input (not a constant head)
    # the image matters: the same prompt on another image scores differently
    other = ir_reward(_images(1), prompts)
    assert (other - got).abs().max() > 1e-3


def test_imagereward_gradients_reach_pixels_and_model_frozen(ir_reward):
    images = _images(2).requires_grad_(True)
    ir_reward.train()  # a trainer calling .train() must not switch dropout on in the frozen reward
    s1 = ir_reward(images, ["a blue sky", "a photo of a cat"])
    s2 = ir_reward(images, ["a blue sky", "a photo of a cat"])
    torch.testing.assert_close(s1, s2)  # deterministic: dropout off
    s1.sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in ir_reward.parameters())


def test_imagereward_preprocess_matches_pil(ir_reward):
    """torch Resize(short, bicubic) + CenterCrop + OpenAI norm vs the official torchvision-on-PIL transform."""
    from torchvision import transforms as tv

    yy, xx = np.mgrid[0:60, 0:90]  # a smooth pattern: PIL's uint8 rounding stays under one level
    arr = np.stack([127 + 120 * np.sin(xx / 4 + c) * np.cos(yy / 5 - c) for c in range(3)], -1).round()
    arr = arr.astype(np.uint8)
    pil_tf = tv.Compose([tv.Resize(IMG, interpolation=tv.InterpolationMode.BICUBIC), tv.CenterCrop(IMG),
                         tv.ToTensor(), tv.Normalize(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)])
    want = pil_tf(Image.fromarray(arr))
    got = ir_reward.preprocess(torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255)[0]
    assert got.shape == want.shape == (3, IMG, IMG)
    # <= 1.5 uint8 levels (bilinear instead of bicubic gives ~5, a squash or pad instead of the crop ~200)
    assert (got - want).abs().max() * min(OPENAI_CLIP_STD) * 255 < 1.5


def test_imagereward_cli_score_with_tokenizer_next_to_checkpoint(ir_dir, ir_reward, tokenizer_dir, tmp_path):
    """`rewardflow score --reward imagereward --weights DIR`: the tokenizer is found in DIR (offline use)."""
    from rewardflow.cli import main

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for f in ("ImageReward.pt", "med_config.json"):
        (ckpt / f).write_bytes((ir_dir[0] / f).read_bytes())
    (ckpt / "vocab.txt").write_bytes((tokenizer_dir / "vocab.txt").read_bytes())
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    arrays = [(np.random.default_rng(i).random((36, 44, 3)) * 255).astype(np.uint8) for i in range(2)]
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(imgs / f"{i}.png")
    out = tmp_path / "scores.json"
    assert main(["score", "--reward", "imagereward", "--images", str(imgs), "--prompt", "a red cat", "--weights",
                 str(ckpt), "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    want = ir_reward.score_files([Image.fromarray(a) for a in arrays], ["a red cat"] * 2)["score"]  # official PIL path
    torch.testing.assert_close(torch.tensor([r["imagereward"] for r in rows]), want, rtol=0, atol=1e-6)
    media = torch.stack([torch.from_numpy(a).permute(2, 0, 1).float() / 255 for a in arrays])
    assert torch.allclose(want, ir_reward(media, ["a red cat"] * 2), atol=0.05)  # the tensor path is close


def test_imagereward_dtype(ir_dir, tokenizer_dir, ir_reward):
    r16 = load_reward("imagereward", path=str(ir_dir[0]), tokenizer=str(tokenizer_dir), dtype="bf16")
    assert r16.model.vision.embeddings.patch_embedding.weight.dtype == torch.bfloat16
    assert r16.model.head.layers[0].weight.dtype == torch.float32  # head on float features (ImageReward.score)
    images, prompts = _images(5), ["a red cat", "a blue dog"]
    got, want = r16(images, prompts), ir_reward(images, prompts)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0.0, atol=0.1 * want.abs().max().item())


def test_imagereward_missing_files(tmp_path, ir_dir, tokenizer_dir):
    with pytest.raises(FileNotFoundError, match="ImageReward.pt"):
        load_reward("imagereward", path=str(tmp_path), tokenizer=str(tokenizer_dir))
    (tmp_path / "ImageReward.pt").write_bytes((ir_dir[0] / "ImageReward.pt").read_bytes())
    with pytest.raises(FileNotFoundError, match="med_config.json"):
        load_reward("imagereward", path=str(tmp_path), tokenizer=str(tokenizer_dir))
    with pytest.raises(FileNotFoundError, match="nowhere/ImageReward.pt"):
        load_reward("imagereward", path="/nowhere/ImageReward.pt", tokenizer=str(tokenizer_dir))


def _write(tmp_path, sd, med=None):
    torch.save(sd, tmp_path / "ImageReward.pt")
    (tmp_path / "med_config.json").write_text(json.dumps(med or med_config()))
    return str(tmp_path)


def test_imagereward_key_mismatch_errors(tmp_path, tokenizer_dir):
    sd = official_imagereward_state_dict()
    bad = dict(sd, **{"blip.itm_head.weight": torch.zeros(2, T_H)})
    with pytest.raises(ValueError, match="unexpected keys.*blip.itm_head.weight"):
        load_reward("imagereward", path=_write(tmp_path, bad), tokenizer=str(tokenizer_dir))
    missing = {k: v for k, v in sd.items() if k != "mlp.layers.7.bias"}
    with pytest.raises(ValueError, match=r"missing keys \['head.layers.7.bias'\]"):
        load_reward("imagereward", path=_write(tmp_path, missing), tokenizer=str(tokenizer_dir))
    wrong = dict(sd, **{"blip.text_encoder.encoder.layer.0.crossattention.self.key.weight": torch.zeros(T_H, 5)})
    with pytest.raises(ValueError, match="shape mismatches.*crossattention.self.key.weight"):
        load_reward("imagereward", path=_write(tmp_path, wrong), tokenizer=str(tokenizer_dir))
    with pytest.raises(ValueError, match="add_cross_attention"):
        load_reward("imagereward", path=_write(tmp_path, sd, dict(med_config(), add_cross_attention=False)),
                    tokenizer=str(tokenizer_dir))


# ------------------------------------------------------------------------------------------------------------
# LAION aesthetic predictor v2
# ------------------------------------------------------------------------------------------------------------
TINY_CLIP = "rf-tiny-aesthetic-clip"


@pytest.fixture(scope="module")
def aes_files(tmp_path_factory):
    """A tiny open_clip ViT (saved as an open_clip checkpoint) + the official-format head file."""
    import open_clip

    d = tmp_path_factory.mktemp("aesthetic")
    cfg = {"embed_dim": 24, "vision_cfg": {"image_size": 28, "layers": 1, "width": 32, "head_width": 16,
                                           "patch_size": 14},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1}}
    (d / f"{TINY_CLIP}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(str(d))
    torch.manual_seed(0)
    clip = open_clip.create_model(TINY_CLIP).eval()
    with torch.no_grad():
        for p in clip.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.save(clip.state_dict(), d / "clip.pt")
    head = mlp_head_state_dict(24, seed=1)
    torch.save(head, d / "sac+logos+ava1-l14-linearMSE.pth")
    return d, clip, head


def _aesthetic(d, **kw):
    return load_reward("aesthetic", path=str(d / "sac+logos+ava1-l14-linearMSE.pth"), model=TINY_CLIP,
                       pretrained=str(d / "clip.pt"), **kw)


def test_aesthetic_score_matches_independent(aes_files):
    d, clip, head = aes_files
    reward = _aesthetic(d)
    images = _images(3, b=3, h=40, w=56)
    got = reward(images, ["", "x", "y"])
    with torch.no_grad():
        emb = clip.encode_image(clip_preprocess(images, 28, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, mode="crop"))
        want = ref_head(head, "", emb / emb.norm(dim=-1, keepdim=True))
    assert got.shape == (3,)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert got.std() > 1e-4
    # the directory holding the file also works
    torch.testing.assert_close(load_reward("aesthetic", path=str(d), model=TINY_CLIP,
                                           pretrained=str(d / "clip.pt"))(images, ["", "", ""]), got)


def test_aesthetic_gradients_reach_pixels(aes_files):
    reward = _aesthetic(aes_files[0])
    reward.train()
    images = _images(4).requires_grad_(True)
    reward(images, ["", ""]).sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in reward.parameters())
    assert not reward.head.training


def test_aesthetic_errors(aes_files, tmp_path):
    d = aes_files[0]
    with pytest.raises(FileNotFoundError, match="sac\\+logos\\+ava1-l14-linearMSE.pth"):
        load_reward("aesthetic", path=str(tmp_path), model=TINY_CLIP, pretrained=str(d / "clip.pt"))
    with pytest.raises(FileNotFoundError, match="needs path="):
        load_reward("aesthetic", model=TINY_CLIP, pretrained=str(d / "clip.pt"))
    head = torch.load(d / "sac+logos+ava1-l14-linearMSE.pth", weights_only=True)
    renamed = {k.replace("layers.6", "layers.5"): v for k, v in head.items()}
    torch.save(renamed, tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    with pytest.raises(ValueError, match=r"missing keys \['layers.6.bias', 'layers.6.weight'\]"):
        load_reward("aesthetic", path=str(tmp_path), model=TINY_CLIP, pretrained=str(d / "clip.pt"))
    big = mlp_head_state_dict(768, seed=0)  # the real 768-d head on a 24-d CLIP
    torch.save(big, tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    with pytest.raises(ValueError, match="768-d CLIP embeddings.*24-d"):
        load_reward("aesthetic", path=str(tmp_path), model=TINY_CLIP, pretrained=str(d / "clip.pt"))
