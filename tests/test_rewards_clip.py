"""CLIP-family rewards: clip, clipscore, hpsv2, hpsv2.1, pickscore, vlm_rm, lambda_harmonic.

Each model is the real architecture built from a tiny config with random weights, saved in the official checkpoint
format and loaded back through the real loader. Scores are recomputed independently from the raw model outputs.
"""


import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_transforms import _hpsv2_reference, _toy_image

from rewardflow.testing.tiny_rewards import (random_open_clip, register_tiny_open_clip, write_hf_clip, write_hps_checkpoints,
                                     write_open_clip_checkpoint)
from rewardflow.rewards.base import load_reward, reward_info
from rewardflow.rewards.transforms import clip_preprocess

TINY = "rf-tiny-clip"  # open_clip config registered below (ViT 64px / patch 16, text width 32, real BPE tokenizer)
PROMPTS = ["a red circle", "two blue squares", "a green triangle on the left"]


# ------------------------------------------------------------------------------------------------------------
# fixtures: tiny models saved in the official formats
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_open_clip(tmp_path_factory):
    return register_tiny_open_clip(tmp_path_factory.mktemp("open_clip_cfg"), TINY, image_size=64, patch_size=16)


@pytest.fixture(scope="module")
def open_clip_ckpt(tiny_open_clip, tmp_path_factory):
    """An open_clip checkpoint file (``{"state_dict": ...}``, as open_clip's own loader accepts) + reference model."""
    path = write_open_clip_checkpoint(tmp_path_factory.mktemp("oc") / "tiny_clip.pt", tiny_open_clip, seed=0)
    return path, random_open_clip(tiny_open_clip, 0)


@pytest.fixture(scope="module")
def hps_dir(tiny_open_clip, tmp_path_factory):
    """Both official HPS files (fp16 tensors under ``state_dict``) + fp32 reference models built from them."""
    import open_clip

    d = write_hps_checkpoints(tmp_path_factory.mktemp("hps"), tiny_open_clip, seed=10)
    refs = {}
    for version, fname in [("v2.0", "HPS_v2_compressed.pt"), ("v2.1", "HPS_v2.1_compressed.pt")]:
        ref = open_clip.create_model(tiny_open_clip).eval()
        ref.load_state_dict({k: v.float() for k, v in torch.load(d / fname, weights_only=True)["state_dict"].items()})
        refs[version] = ref
    return d, refs


@pytest.fixture(scope="module")
def hf_clip_dir(tmp_path_factory):
    """A transformers CLIPModel + CLIPTokenizer (byte-level BPE, no merges) + CLIPImageProcessor save_pretrained."""
    return write_hf_clip(tmp_path_factory.mktemp("hf_clip"), image_size=64, patch_size=16)


def _images(sizes=((96, 96), (80, 120), (130, 70)), seed=0):
    """uint8-exact float images of different aspect ratios (so the PIL path sees the same pixels)."""
    pils = [_toy_image(h, w, seed=seed + i) for i, (h, w) in enumerate(sizes)]
    return pils


def _t(pil):
    return torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def _batch(n=3, h=96, w=80, seed=0):
    return torch.cat([_t(_toy_image(h, w, seed=seed + i)) for i in range(n)])


def _cos(a, b):
    return (F.normalize(a.float(), dim=-1) * F.normalize(b.float(), dim=-1)).sum(-1)


def _hf_features(model, tokenizer, pixel_values, prompts):
    ids = tokenizer(prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
    img = model.get_image_features(pixel_values=pixel_values).pooler_output
    txt = model.get_text_features(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).pooler_output
    return img, txt


# ------------------------------------------------------------------------------------------------------------
# registry
# ------------------------------------------------------------------------------------------------------------
def test_registry_metadata():
    info = {r["name"]: r for r in reward_info()}
    for name in ("clip", "clipscore", "hpsv2", "hpsv2.1", "pickscore", "vlm_rm", "lambda_harmonic"):
        assert info[name]["modality"] == "image" and info[name]["differentiable"] is True, name


# ------------------------------------------------------------------------------------------------------------
# clip / clipscore on open_clip
# ------------------------------------------------------------------------------------------------------------
def test_clip_open_clip_equals_cosine_of_raw_outputs_and_official_pil_path(open_clip_ckpt, tiny_open_clip):
    import open_clip

    path, ref = open_clip_ckpt
    r = load_reward("clip", path=str(path), model=tiny_open_clip)
    assert r.backbone.backend == "open_clip"
    pils = _images()
    scores = torch.cat([r(_t(p), [q]) for p, q in zip(pils, PROMPTS)])
    tok = open_clip.get_tokenizer(tiny_open_clip)
    with torch.no_grad():
        txt = ref.encode_text(tok(PROMPTS))
        # (a) exact: the same torch pixels through the raw model
        pix = torch.cat([clip_preprocess(_t(p), size=64, mode="crop") for p in pils])
        assert torch.allclose(scores, _cos(ref.encode_image(pix), txt), atol=1e-5)
        # (b) official open_clip eval transform on PIL images (Resize + CenterCrop + ToTensor + Normalize)
        official = open_clip.image_transform(64, is_train=False)
        pix_pil = torch.stack([official(p) for p in pils])
        assert torch.allclose(scores, _cos(ref.encode_image(pix_pil), txt), atol=5e-3)


def test_clipscore_prefix_weight_and_clamp(open_clip_ckpt, tiny_open_clip):
    import open_clip

    path, ref = open_clip_ckpt
    r = load_reward("clipscore", path=str(path), model=tiny_open_clip)
    x = _batch(6, seed=3)
    prompts = PROMPTS + ["a yellow square", "three circles", "a purple triangle at the bottom"]
    tok = open_clip.get_tokenizer(tiny_open_clip)
    with torch.no_grad():
        cos = _cos(ref.encode_image(clip_preprocess(x, size=64)),
                   ref.encode_text(tok(["A photo depicts " + p for p in prompts])))
    want = 2.5 * torch.clamp(cos, min=0)
    got = r(x, prompts)
    assert torch.allclose(got, want, atol=1e-5)
    assert (cos < 0).any() and (cos > 0).any(), "random weights should give both signs"  # exercises the clamp
    assert (got[cos < 0] == 0).all()
    # and CLIP-S differs from the un-prefixed cosine (the prefix is really applied)
    plain = load_reward("clip", path=str(path), model=tiny_open_clip)(x, prompts)
    assert not torch.allclose(2.5 * plain.clamp_min(0), got, atol=1e-4)


def test_clipscore_gradients_only_through_positive_cosines(open_clip_ckpt, tiny_open_clip):
    path, _ = open_clip_ckpt
    r = load_reward("clipscore", path=str(path), model=tiny_open_clip)
    x = _batch(6, seed=3).requires_grad_(True)
    prompts = PROMPTS + ["a yellow square", "three circles", "a purple triangle at the bottom"]
    s = r(x, prompts)
    s.sum().backward()
    per_sample = x.grad.abs().flatten(1).sum(1)
    assert ((per_sample > 0) == (s > 0)).all()


# ------------------------------------------------------------------------------------------------------------
# clip on transformers
# ------------------------------------------------------------------------------------------------------------
def test_clip_transformers_backend_equals_raw_outputs_and_clip_processor(hf_clip_dir):
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    r = load_reward("clip", path=str(hf_clip_dir))  # directory with config.json -> transformers
    assert r.backbone.backend == "transformers"
    assert r.backbone.preprocess.mode == "crop" and r.backbone.preprocess.size == 64
    model = CLIPModel.from_pretrained(hf_clip_dir).eval()
    tok = AutoTokenizer.from_pretrained(hf_clip_dir)
    pils = _images(((96, 96), (80, 121), (131, 70)))
    scores = torch.cat([r(_t(p), [q]) for p, q in zip(pils, PROMPTS)])
    with torch.no_grad():
        pix = torch.cat([clip_preprocess(_t(p), size=64, crop_rounding="floor") for p in pils])
        assert torch.allclose(scores, _cos(*_hf_features(model, tok, pix, PROMPTS)), atol=1e-5)
        proc = CLIPImageProcessor.from_pretrained(hf_clip_dir)
        pix_official = proc(images=pils, return_tensors="pt")["pixel_values"]
        assert torch.allclose(pix, pix_official, atol=2.0 / 255 / 0.26)
        assert torch.allclose(scores, _cos(*_hf_features(model, tok, pix_official, PROMPTS)), atol=5e-3)


# ------------------------------------------------------------------------------------------------------------
# HPSv2 / HPSv2.1
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,version", [("hpsv2", "v2.0"), ("hpsv2.1", "v2.1")])
def test_hps_loads_official_checkpoint_and_equals_cosine(hps_dir, tiny_open_clip, name, version):
    import open_clip

    d, refs = hps_dir
    r = load_reward(name, path=str(d), model=tiny_open_clip)
    ref = refs[version]
    assert r.backbone.preprocess.mode == "pad"
    pils = _images(((96, 96), (80, 120), (130, 70)), seed=5)
    scores = torch.cat([r(_t(p), [q]) for p, q in zip(pils, PROMPTS)])
    tok = open_clip.get_tokenizer(tiny_open_clip)
    with torch.no_grad():
        txt = ref.encode_text(tok(PROMPTS))
        pix = torch.cat([clip_preprocess(_t(p), size=64, mode="pad", clamp=False) for p in pils])
        assert torch.allclose(scores, _cos(ref.encode_image(pix), txt), atol=1e-5)
        # the official transform (ToTensor, ResizeMaxSize on the tensor, Normalize): the same pixels
        pix_official = torch.stack([_hpsv2_reference(p, 64) for p in pils])
        assert torch.allclose(scores, _cos(ref.encode_image(pix_official), txt), atol=1e-5)
    # the checkpoint file itself (not only its directory) loads the same weights
    file = d / ("HPS_v2_compressed.pt" if version == "v2.0" else "HPS_v2.1_compressed.pt")
    r2 = load_reward(name, path=str(file), model=tiny_open_clip)
    assert torch.allclose(r2(_t(pils[0]), PROMPTS[:1]), scores[:1], atol=1e-6)


def test_hps_versions_are_different_files(hps_dir, tiny_open_clip):
    d, _ = hps_dir
    x = _batch(2, seed=7)
    a = load_reward("hpsv2", path=str(d), model=tiny_open_clip)(x, PROMPTS[:2])
    b = load_reward("hpsv2.1", path=str(d), model=tiny_open_clip)(x, PROMPTS[:2])
    assert not torch.allclose(a, b, atol=1e-3)


def test_hps_errors(hps_dir, tiny_open_clip, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"HPS_v2\.1_compressed\.pt"):
        load_reward("hpsv2.1", path=str(empty), model=tiny_open_clip)
    with pytest.raises(FileNotFoundError, match="/nonexistent/HPS_v2.pt"):
        load_reward("hpsv2", path="/nonexistent/HPS_v2.pt", model=tiny_open_clip)
    # default hub id without network: a clear error naming the repo file and the fix
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(FileNotFoundError, match=r"HPS_v2\.1_compressed\.pt.*xswu/HPSv2.*path="):
        load_reward("hpsv2.1", model=tiny_open_clip)
    # a checkpoint of another architecture
    bad = tmp_path / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": {"visual.proj": torch.zeros(3, 3, dtype=torch.float16)}}, bad)
    with pytest.raises(ValueError, match="does not match open_clip"):
        load_reward("hpsv2.1", path=str(bad), model=tiny_open_clip)
    with pytest.raises(ValueError, match="unknown open_clip model"):
        load_reward("hpsv2.1", path=str(hps_dir[0]), model="ViT-Nope-1")


def test_hps_bf16_dtype(hps_dir, tiny_open_clip):
    d, _ = hps_dir
    x = _batch(2, seed=8)
    r32 = load_reward("hpsv2.1", path=str(d), model=tiny_open_clip)
    r16 = load_reward("hpsv2.1", path=str(d), model=tiny_open_clip, dtype="bf16")
    assert r16.backbone.dtype == torch.bfloat16
    s16 = r16(x, PROMPTS[:2])
    assert s16.dtype == torch.float32 and torch.allclose(s16, r32(x, PROMPTS[:2]), atol=0.05)


# ------------------------------------------------------------------------------------------------------------
# PickScore
# ------------------------------------------------------------------------------------------------------------
def test_pickscore_equals_logit_scale_times_cosine(hf_clip_dir):
    from transformers import AutoProcessor, CLIPModel

    r = load_reward("pickscore", path=str(hf_clip_dir))
    model = CLIPModel.from_pretrained(hf_clip_dir).eval()
    assert abs(float(model.logit_scale.detach().exp()) - float(np.exp(3.0))) < 1e-4
    pils = _images(((96, 96), (80, 120), (130, 70)), seed=9)
    scores = torch.cat([r(_t(p), [q]) for p, q in zip(pils, PROMPTS)])
    # the official recipe: AutoProcessor (PIL images), get_*_features, logit_scale.exp() * cos
    proc = AutoProcessor.from_pretrained(hf_clip_dir)
    inp = proc(images=pils, text=PROMPTS, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        img = model.get_image_features(pixel_values=inp["pixel_values"]).pooler_output
        txt = model.get_text_features(input_ids=inp["input_ids"], attention_mask=inp["attention_mask"]).pooler_output
    want = model.logit_scale.exp() * _cos(img, txt)
    assert torch.allclose(scores, want, atol=0.05)
    with torch.no_grad():
        pix = torch.cat([clip_preprocess(_t(p), size=64, crop_rounding="floor") for p in pils])
        exact = model.logit_scale.exp() * _cos(model.get_image_features(pixel_values=pix).pooler_output, txt)
    assert torch.allclose(scores, exact, atol=1e-4)


def test_pickscore_errors(hf_clip_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="/nonexistent/PickScore_v1"):
        load_reward("pickscore", path="/nonexistent/PickScore_v1")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_reward("pickscore", path=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="/nonexistent/processor"):
        load_reward("pickscore", path=str(hf_clip_dir), processor="/nonexistent/processor")


# ------------------------------------------------------------------------------------------------------------
# VLM-RM
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_vlm_rm_equals_projection_formula(open_clip_ckpt, tiny_open_clip, alpha):
    import open_clip

    path, ref = open_clip_ckpt
    goal, baseline = ["a red circle", "one red circle"], ["a circle", "a shape"]
    r = load_reward("vlm_rm", path=str(path), model=tiny_open_clip, goal=goal, baseline=baseline, alpha=alpha)
    x = _batch(3, h=90, w=70, seed=11)
    got = r(x, ["ignored"] * 3)
    tok = open_clip.get_tokenizer(tiny_open_clip)
    with torch.no_grad():
        # official preprocessing: square bicubic resize of the float tensor (no clipping), OpenAI mean/std
        xe = F.normalize(ref.encode_image(clip_preprocess(x, size=64, mode="squash", clamp=False)), dim=-1)
        g = F.normalize(ref.encode_text(tok(goal)), dim=-1).mean(0)
        b = F.normalize(ref.encode_text(tok(baseline)), dim=-1).mean(0)
    d = (g - b)[None]
    P = alpha * (d.T @ d) / (d @ d.T) + (1 - alpha) * torch.eye(d.shape[1])
    want = 1 - 0.5 * ((xe - g) @ P).pow(2).sum(-1)
    assert torch.allclose(got, want, atol=1e-5)


def test_vlm_rm_alpha0_single_goal_is_cosine_and_errors(open_clip_ckpt, tiny_open_clip):
    path, _ = open_clip_ckpt
    x = _batch(3, seed=12)
    # goal=None: each sample's prompt is its goal; alpha=0 and a unit goal: R = 1 - |x - g|^2 / 2 = cos(x, g)
    r = load_reward("vlm_rm", path=str(path), model=tiny_open_clip, baseline="a shape", alpha=0.0)
    xe, g = r.backbone.encode_image(x), r.backbone.encode_text(PROMPTS)
    assert torch.allclose(r(x, PROMPTS), (xe * g).sum(-1), atol=1e-5)
    with pytest.raises(ValueError, match="baseline="):
        load_reward("vlm_rm", path=str(path), model=tiny_open_clip)
    with pytest.raises(ValueError, match="alpha must be in"):
        load_reward("vlm_rm", path=str(path), model=tiny_open_clip, baseline="x", alpha=2.0)


# ------------------------------------------------------------------------------------------------------------
# lambda-Harmonic
# ------------------------------------------------------------------------------------------------------------
def test_lambda_harmonic_equals_weighted_harmonic_mean(hf_clip_dir, tmp_path):
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    refs = [_t(_toy_image(100, 100, seed=20))[0], _t(_toy_image(80, 140, seed=21))[0]]
    r = load_reward("lambda_harmonic", path=str(hf_clip_dir), references=refs, lam=0.3)
    model = CLIPModel.from_pretrained(hf_clip_dir).eval()
    tok = AutoTokenizer.from_pretrained(hf_clip_dir)
    x = _batch(3, seed=22)
    heads = r.all_heads(x, PROMPTS)
    with torch.no_grad():
        pre = lambda im: clip_preprocess(im, size=64, crop_rounding="floor")  # noqa: E731
        img, txt = _hf_features(model, tok, pre(x), PROMPTS)
        ref_f = torch.cat([model.get_image_features(pixel_values=pre(im[None])).pooler_output for im in refs])
    i_sim = (torch.stack([_cos(img, rf.expand_as(img)) for rf in ref_f], 1).mean(1) + 1) / 2
    t_sim = (_cos(img, txt) + 1) / 2
    want = 1 / (0.3 / (i_sim + 1e-8) + 0.7 / (t_sim + 1e-8))
    assert torch.allclose(heads["score"], want, atol=1e-5)
    assert torch.allclose(heads["image_sim"], i_sim, atol=1e-5) and torch.allclose(heads["text_sim"], t_sim, atol=1e-5)
    assert torch.allclose(r(x, PROMPTS), want, atol=1e-5)
    # lambda = 1 / 0: image-only / text-only
    r.lam = 1.0
    assert torch.allclose(r(x, PROMPTS), i_sim, atol=1e-5)
    r.lam = 0.0
    assert torch.allclose(r(x, PROMPTS), t_sim, atol=1e-5)
    # reference images from files (a directory) are embedded through the image processor (the official file path)
    pils = []
    for i, im in enumerate(refs):
        pils.append(Image.fromarray((im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)))
        pils[-1].save(tmp_path / f"ref{i}.png")
    r_files = load_reward("lambda_harmonic", path=str(hf_clip_dir), references=str(tmp_path), lam=0.3)
    with torch.no_grad():
        pix = AutoImageProcessor.from_pretrained(hf_clip_dir, backend="pil")(images=pils, return_tensors="pt")
        want_ref = F.normalize(model.get_image_features(pixel_values=pix["pixel_values"]).pooler_output, dim=-1)
    torch.testing.assert_close(r_files.ref_features, want_ref, rtol=0, atol=1e-6)
    assert torch.allclose(r_files.ref_features, r.ref_features, atol=2e-2)  # the tensor path is close


@pytest.fixture(scope="module")
def hf_align_dir(tmp_path_factory):
    """RPO's encoder family: a transformers AlignModel (EfficientNet + BERT) with ALIGN's processor conventions
    (square bicubic resize, rescale 1/127.5 with offset -1, no mean/std), tiny and random."""
    from transformers import AlignConfig, AlignModel, BertTokenizer, EfficientNetImageProcessor

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted({w for p in PROMPTS for w in p.split()})
    tok = BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    vision = dict(image_size=64, width_coefficient=0.1, depth_coefficient=0.1, hidden_dim=64)
    text = dict(vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    probe = AlignModel(AlignConfig(text_config=text, vision_config=vision))
    dim = probe.get_image_features(pixel_values=torch.zeros(1, 3, 64, 64)).pooler_output.shape[-1]
    model = AlignModel(AlignConfig(text_config=text, vision_config=vision, projection_dim=dim)).eval()
    d = tmp_path_factory.mktemp("hf_align")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    EfficientNetImageProcessor(size={"height": 64, "width": 64}, do_center_crop=False, rescale_factor=1 / 127.5,
                               rescale_offset=True, do_normalize=False, include_top=False).save_pretrained(d)
    return d


def test_lambda_harmonic_on_align_matches_official_processor_path(hf_align_dir):
    from transformers import AlignModel, AlignProcessor

    refs = [_toy_image(100, 100, seed=40), _toy_image(80, 140, seed=41)]
    r = load_reward("lambda_harmonic", path=str(hf_align_dir), references=[_t(p)[0] for p in refs], lam=0.3)
    assert r.backbone.preprocess.mode == "squash" and r.backbone.preprocess.mean == (0.5, 0.5, 0.5)
    pils = _images(((96, 96), (80, 120), (130, 70)), seed=42)
    got = torch.cat([r(_t(p), [q]) for p, q in zip(pils, PROMPTS)])
    # RPO evaluation_metrics.py: AlignProcessor on PIL images, get_image/text_features, cos mapped to [0, 1]
    model, proc = AlignModel.from_pretrained(hf_align_dir).eval(), AlignProcessor.from_pretrained(hf_align_dir)
    with torch.no_grad():
        inp = proc(images=pils, text=PROMPTS, padding=True, return_tensors="pt")
        img = model.get_image_features(pixel_values=inp["pixel_values"]).pooler_output
        txt = model.get_text_features(input_ids=inp["input_ids"], attention_mask=inp["attention_mask"]).pooler_output
        ref = model.get_image_features(pixel_values=proc(images=refs, return_tensors="pt")["pixel_values"]).pooler_output
    i_sim = (torch.stack([_cos(img, rf.expand_as(img)) for rf in ref], 1).mean(1) + 1) / 2
    t_sim = (_cos(img, txt) + 1) / 2
    want = 1 / (0.3 / i_sim + 0.7 / t_sim)
    assert torch.allclose(got, want, atol=5e-3)


def test_lambda_harmonic_errors(hf_clip_dir, tmp_path):
    with pytest.raises(ValueError, match="references="):
        load_reward("lambda_harmonic", path=str(hf_clip_dir))
    with pytest.raises(FileNotFoundError, match="no reference images"):
        load_reward("lambda_harmonic", path=str(hf_clip_dir), references=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_reward("lambda_harmonic", path=str(hf_clip_dir), references=[str(tmp_path / "missing.png")])


# ------------------------------------------------------------------------------------------------------------
# shared behaviour: gradients, frozen eval models, text cache, missing files
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def all_rewards(open_clip_ckpt, hps_dir, hf_clip_dir, tiny_open_clip):
    oc = dict(path=str(open_clip_ckpt[0]), model=tiny_open_clip)
    refs = _batch(2, seed=30)
    return {
        "clip": load_reward("clip", **oc),
        "clip_hf": load_reward("clip", path=str(hf_clip_dir)),
        "hpsv2": load_reward("hpsv2", path=str(hps_dir[0]), model=tiny_open_clip),
        "hpsv2.1": load_reward("hpsv2.1", path=str(hps_dir[0]), model=tiny_open_clip),
        "pickscore": load_reward("pickscore", path=str(hf_clip_dir)),
        "vlm_rm": load_reward("vlm_rm", baseline="a shape", alpha=0.5, **oc),
        "lambda_harmonic": load_reward("lambda_harmonic", path=str(hf_clip_dir), references=refs),
    }


@pytest.mark.parametrize("key", ["clip", "clip_hf", "hpsv2", "hpsv2.1", "pickscore", "vlm_rm", "lambda_harmonic"])
def test_gradients_reach_pixels_and_models_are_frozen(all_rewards, key):
    r = all_rewards[key]
    r.train()  # a trainer may call .train(); the reward model must stay in eval mode and frozen
    assert not r.backbone.model.training
    assert not any(p.requires_grad for p in r.parameters())
    x = _batch(2, h=72, w=72, seed=31).requires_grad_(True)
    s = r(x, PROMPTS[:2])
    assert s.shape == (2,) and s.dtype == torch.float32 and torch.isfinite(s).all()
    s.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert (x.grad.abs().flatten(1).sum(1) > 0).all()
    # the gradient is the true derivative: a small step along it raises the score as predicted
    d = x.grad / x.grad.norm()
    eps = 1e-2
    with torch.no_grad():
        up, down = r((x + eps * d).clamp(0, 1), PROMPTS[:2]), r((x - eps * d).clamp(0, 1), PROMPTS[:2])
        fd = (up.sum() - down.sum()) / (2 * eps)
    assert abs(float(fd) - float(x.grad.norm())) <= 0.1 * float(x.grad.norm()) + 1e-4


def test_text_embeddings_cached_per_prompt(all_rewards, monkeypatch):
    bb = all_rewards["clip_hf"].backbone
    bb.clear_text_cache()
    calls = []
    orig = bb._text_features
    monkeypatch.setattr(bb, "_text_features", lambda prompts: calls.append(list(prompts)) or orig(prompts))
    x = _batch(3, seed=32)
    first = all_rewards["clip_hf"](x, ["a", "b", "a"])
    second = all_rewards["clip_hf"](x, ["b", "a", "c"])
    assert calls == [["a", "b"], ["c"]]  # each distinct prompt encoded once
    bb.clear_text_cache()
    fresh = all_rewards["clip_hf"](x, ["b", "a", "c"])  # cached embeddings give the uncached scores
    assert torch.allclose(second, fresh, atol=1e-6)
    assert torch.allclose(first[1], all_rewards["clip_hf"](x[1:2], ["b"])[0], atol=1e-6)


def test_missing_files_give_clear_errors(tiny_open_clip, tmp_path):
    with pytest.raises(FileNotFoundError, match="/nonexistent/weights.pt"):
        load_reward("clip", path="/nonexistent/weights.pt", model=tiny_open_clip)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_reward("clip", path=str(tmp_path), backend="transformers")
    with pytest.raises(ValueError, match="backend must be"):
        load_reward("clip", path=str(tmp_path), backend="jax")
