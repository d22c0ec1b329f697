"""The batched torch preprocessing equals the official PIL/torchvision pipelines and passes gradients to pixels."""

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

from rewardflow.rewards.transforms import (IMAGENET_MEAN, IMAGENET_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
                                           center_crop, clip_preprocess, normalize, pil_transform,
                                           resize_longest_pad, resize_shorter, resize_to)
from rewardflow.toy import world

BICUBIC = T.InterpolationMode.BICUBIC
# PIL rounds each resized pixel to uint8 after each of its two passes (fixed-point filter) and clips each pass;
# measured at most ~1.6 uint8 levels apart from the float path, 0.1-0.2 levels on average.
# Bound: 2 levels / smallest std at every pixel, 0.25 levels on average.
TOL_MAX = 2.0 / 255 / min(OPENAI_CLIP_STD)
TOL_MEAN = 0.25 / 255 / min(OPENAI_CLIP_STD)

# (H, W): downscale square, both orientations, odd excess for the crop, upscaling, already at size
SIZES = [(512, 512), (300, 517), (640, 256), (387, 229), (1024, 1024), (97, 150), (180, 120), (224, 224)]


def _toy_image(h, w, seed=0):
    """A rendered toy-world scene (sharp coloured shapes) resized to h x w with PIL, plus a smooth gradient."""
    rng = np.random.default_rng(seed)
    scene = world.render("a red circle and a blue square", size=96, rng=rng)
    img = Image.fromarray(scene).resize((w, h), Image.BICUBIC)
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    smooth = np.stack([np.sin(5 * xx + 2 * yy), np.cos(7 * xx * yy), xx - yy], -1) * 40
    arr = np.clip(np.asarray(img, dtype=np.float64) + smooth + 20, 0, 255).round().astype(np.uint8)
    return Image.fromarray(arr)


def _to_tensor(pil):
    return torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def _hpsv2_reference(pil, size):
    """HPSv2's eval transform, written independently from tgxs002/HPSv2 hpsv2/src/open_clip/transform.py
    (``image_transform(..., resize_longest_max=True)``): ``ToTensor`` first, then ``ResizeMaxSize`` on the float
    tensor (torchvision resize, bicubic, antialiased, no clipping; skipped, pad included, when the longest side
    already equals ``size``), zero pad, ``Normalize``."""
    x = TF.to_tensor(pil.convert("RGB"))
    h, w = x.shape[1:]
    scale = size / float(max(h, w))
    if scale != 1.0:
        new = [round(h * scale), round(w * scale)]
        x = TF.resize(x, new, BICUBIC, antialias=True)
        ph, pw = size - new[0], size - new[1]
        x = TF.pad(x, [pw // 2, ph // 2, pw - pw // 2, ph - ph // 2], fill=0)
    return TF.normalize(x, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)


def _normalized(arr_hwc_uint8, mean, std):
    """uint8 HWC array -> ToTensor (/ 255 in float32) -> (x - mean) / std, as torchvision's ToTensor + Normalize."""
    x = torch.from_numpy(np.array(arr_hwc_uint8, dtype=np.uint8)).permute(2, 0, 1).float() / 255
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def openai_clip_reference(pil, size, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD):
    """OpenAI CLIP's ``_transform`` (openai/CLIP clip/clip.py; ImageReward.py ``_transform``, clipscore
    ``_transform_test``, the aesthetic predictor's ``clip.load``) written out with PIL calls: torchvision
    ``Resize(size)`` on a PIL image is ``Image.resize`` of the shorter side to ``size`` (longer side truncated),
    ``CenterCrop`` crops at ``int(round(excess / 2))``, then ``convert("RGB")``, ToTensor and Normalize."""
    w, h = pil.size
    nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    im = pil if (nw, nh) == (w, h) else pil.resize((nw, nh), Image.BICUBIC)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    im = im.crop((left, top, left + size, top + size)).convert("RGB")
    return _normalized(np.asarray(im), mean, std)


def hf_processor_reference(pil, size, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD):
    """transformers' ``CLIPImageProcessor`` as PickScore's official code ran it (the PIL "slow" processor,
    transformers ``image_processing_clip.py`` / ``image_transforms.py``) step by step: ``convert_to_rgb``
    (transparency composited onto white), shortest edge -> ``size`` with ``PIL.Image.resize`` (longer side
    ``int(size * long / short)``), centre crop at ``(h - size) // 2``, rescale ``uint8 * (1/255)`` in float64 then
    float32, ``(x - mean) / std`` in float32."""
    if "A" in pil.getbands() or pil.info.get("transparency") is not None:
        rgba = pil.convert("RGBA")
        pil = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    else:
        pil = pil.convert("RGB")
    w, h = pil.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    nw, nh = (size, new_long) if w <= h else (new_long, size)
    arr = np.asarray(pil.resize((nw, nh), Image.BICUBIC))
    top, left = (nh - size) // 2, (nw - size) // 2
    arr = arr[top:top + size, left:left + size]
    x = (arr.astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.array(mean, dtype=np.float32)) / np.array(std, dtype=np.float32)
    return torch.from_numpy(x).permute(2, 0, 1).contiguous()


def vlm_rm_reference(pil, size, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD):
    """VLM-RM's transform (AlignmentResearch/vlmrm ``src/vlmrm/contrib/open_clip/transform.py``): uint8 frame to
    float / 255, ``Resize((size, size))`` bicubic on the float tensor (antialiased, no clipping), ``CenterCrop``
    (a no-op at that size), ``Normalize``."""
    x = torch.from_numpy(np.asarray(pil.convert("RGB")).copy()).permute(2, 0, 1).to(torch.float32) / 255.0
    x = TF.center_crop(TF.resize(x, [size, size], BICUBIC, antialias=True), size)
    return TF.normalize(x, mean, std)


def _assert_close(ours, ref):
    assert ours.shape == ref.shape
    diff = (ours - ref).abs()
    assert float(diff.max()) <= TOL_MAX, float(diff.max())
    assert float(diff.mean()) <= TOL_MEAN, float(diff.mean())


@pytest.mark.parametrize("hw", SIZES)
def test_crop_mode_matches_torchvision_pil_pipeline(hw):
    pil = _toy_image(*hw)
    ref = T.Compose([T.Resize(224, interpolation=BICUBIC), T.CenterCrop(224), T.ToTensor(),
                     T.Normalize(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)])(pil)
    _assert_close(clip_preprocess(_to_tensor(pil))[0], ref)


@pytest.mark.parametrize("hw", SIZES)
def test_pad_mode_equals_hpsv2_transform(hw):
    # HPSv2 resizes the float tensor and never clips: without the clamp the torch path *is* the official transform
    pil = _toy_image(*hw, seed=1)
    ours = clip_preprocess(_to_tensor(pil), mode="pad", clamp=False)[0]
    torch.testing.assert_close(ours, _hpsv2_reference(pil, 224), rtol=0, atol=1e-6)
    if hw[0] != hw[1]:  # the padded border is exactly the normalised black (0 - mean) / std
        black = normalize(torch.zeros(1, 3, 1, 1), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)[0, :, 0, 0]
        assert torch.allclose(ours[:, 0, 0], black, atol=1e-6)  # top-left pixel lies in the pad either way


def test_hpsv2_keeps_the_bicubic_overshoot():
    # a rendered scene with hard edges: the official pixels leave [0, 1] before normalising, and so do ours
    pil = Image.fromarray(world.render("a red circle and a blue triangle", size=96, rng=np.random.default_rng(5)))
    ref = _hpsv2_reference(pil, 224)
    lo = normalize(torch.zeros(1, 3, 1, 1), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    hi = normalize(torch.ones(1, 3, 1, 1), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    assert ((ref[None] < lo - 0.05) | (ref[None] > hi + 0.05)).any()  # overshoot beyond ~1.3% of the range
    torch.testing.assert_close(clip_preprocess(_to_tensor(pil), mode="pad", clamp=False)[0], ref, rtol=0,
                               atol=1e-6)
    clamped = clip_preprocess(_to_tensor(pil), mode="pad", clamp=True)[0]  # the earlier, wrong pipeline
    assert float((clamped - ref).abs().max()) > 0.2


def _modes_image(mode, h=150, w=110, seed=3):
    base = _toy_image(h, w, seed=seed)
    if mode == "RGBA":  # a transparency gradient: PIL resizes RGBA premultiplied, processors composite on white
        alpha = np.tile(np.linspace(0, 255, w, dtype=np.float64), (h, 1)).round().astype(np.uint8)
        base = base.copy()
        base.putalpha(Image.fromarray(alpha))
        return base
    if mode == "P":
        return base.convert("P", palette=Image.ADAPTIVE, colors=32)
    return base.convert(mode)


@pytest.mark.parametrize("hw", SIZES + [(160, 224), (224, 300)])
def test_pil_transform_is_openai_clip_transform(hw):
    # the file path reproduces the official PIL pipeline bit for bit; the tensor path stays within 2 uint8 levels
    pil = _toy_image(*hw, seed=4)
    got = pil_transform(224)(pil)
    assert torch.equal(got, openai_clip_reference(pil, 224))
    _assert_close(clip_preprocess(_to_tensor(pil))[0], got)


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "CMYK"])
def test_pil_transform_converts_the_mode_after_the_resize(mode):
    pil = _modes_image(mode)
    got = pil_transform(64)(pil)
    assert torch.equal(got, openai_clip_reference(pil, 64))
    if mode in ("RGBA", "P"):  # converting first would resize other pixels (premultiplied alpha / nearest palette)
        first = pil_transform(64)(pil.convert("RGB"))
        assert float((first - got).abs().max()) > 0.05


def test_pil_transform_squash_and_errors():
    pil = _toy_image(97, 150, seed=5)
    want = _normalized(np.asarray(pil.resize((64, 64), Image.BICUBIC)), IMAGENET_MEAN, IMAGENET_STD)
    assert torch.equal(pil_transform(64, IMAGENET_MEAN, IMAGENET_STD, mode="squash")(pil), want)
    with pytest.raises(ValueError, match="HPSv2"):
        pil_transform(64, mode="pad")
    with pytest.raises(ValueError, match="interpolation"):
        pil_transform(64, interpolation="lanczos")


@pytest.mark.parametrize("size,out", [(96, 64), (256, 224), (64, 224)])
def test_sharp_edges_match_pil(size, out):
    # a raw rendered scene (flat colours, hard edges): the cubic overshoot that PIL clips after each pass matters
    pil = Image.fromarray(world.render("a red circle and a blue triangle", size=size,
                                       rng=np.random.default_rng(5)))
    ref = T.Compose([T.Resize(out, interpolation=BICUBIC), T.CenterCrop(out), T.ToTensor(),
                     T.Normalize(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)])(pil)
    _assert_close(clip_preprocess(_to_tensor(pil), size=out)[0], ref)


@pytest.mark.parametrize("hw", [(512, 512), (300, 517), (97, 150)])
def test_squash_and_imagenet_constants(hw):
    pil = _toy_image(*hw, seed=2)
    ref = T.Compose([T.Resize((160, 160), interpolation=BICUBIC), T.ToTensor(),
                     T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(pil)
    ours = clip_preprocess(_to_tensor(pil), size=160, mean=IMAGENET_MEAN, std=IMAGENET_STD, mode="squash")[0]
    assert ours.shape == ref.shape
    assert float((ours - ref).abs().max()) <= 2.0 / 255 / min(IMAGENET_STD)


def test_bilinear_resize_matches_pil():
    pil = _toy_image(300, 517, seed=3)
    ref = TF.to_tensor(TF.resize(pil, [100, 171], T.InterpolationMode.BILINEAR))
    ours = resize_to(_to_tensor(pil), (100, 171), "bilinear", clamp=True)[0]
    assert float((ours - ref).abs().max()) <= 2.0 / 255


@pytest.mark.parametrize("hw", [(300, 517), (517, 300), (225, 400), (227, 227), (1000, 229), (100, 60)])
def test_geometry_matches_torchvision(hw):
    x = torch.rand(1, 3, *hw)
    assert resize_shorter(x, 224).shape[-2:] == TF.resize(x, 224, antialias=True).shape[-2:]
    for size in (224, (200, 96)):
        assert torch.equal(center_crop(x, size), TF.center_crop(x, size))
    h, w = hw
    s = 224 / max(h, w)
    assert resize_longest_pad(x, 224).shape[-2:] == (224, 224)
    assert resize_to(x, (round(h * s), round(w * s))).shape[-2:] == (round(h * s), round(w * s))


def test_center_crop_floor_rounding_matches_hf_convention():
    x = torch.arange(2 * 3 * 10 * 7, dtype=torch.float32).view(2, 3, 10, 7)
    # excess 10 - 7 = 3: torchvision offsets round(1.5) = 2, HF processors int(1.5) = 1
    assert torch.equal(center_crop(x, 7), x[..., 2:9, :])
    assert torch.equal(center_crop(x, 7, rounding="floor"), x[..., 1:8, :])


def test_clamp_before_normalise_like_pil():
    # a hard black/white edge: bicubic overshoots outside [0, 1]; PIL clips it, so must we
    x = torch.zeros(1, 3, 64, 64)
    x[..., 32:] = 1.0
    raw = resize_to(x, (224, 224))
    assert float(raw.min()) < 0 and float(raw.max()) > 1
    out = clip_preprocess(x, mode="squash")
    lo = normalize(torch.zeros(1, 3, 1, 1), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    hi = normalize(torch.ones(1, 3, 1, 1), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    assert (out >= lo - 1e-6).all() and (out <= hi + 1e-6).all()


@pytest.mark.parametrize("mode", ["crop", "pad", "squash"])
def test_gradients_reach_pixels(mode):
    x = (0.1 + 0.8 * torch.rand(2, 3, 96, 80)).requires_grad_(True)
    w = torch.randn(2, 3, 64, 64)
    (clip_preprocess(x, size=64, mode=mode) * w).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # every pixel inside the kept region gets gradient (crop drops the rows outside the central square)
    kept = x.grad[..., 8:88, :] if mode == "crop" else x.grad
    assert (kept.abs().sum(1) > 0).float().mean() > 0.99
    # the map is linear away from the clamp: the gradient is exact along a random direction
    d = torch.randn_like(x) * 1e-2
    with torch.no_grad():
        lin = ((clip_preprocess(x + d, size=64, mode=mode) - clip_preprocess(x, size=64, mode=mode)) * w).sum()
    assert torch.allclose(lin, (x.grad * d).sum(), rtol=1e-3, atol=1e-4)


def test_half_precision_input_and_errors():
    x = torch.rand(1, 3, 50, 70)
    out = clip_preprocess(x.half())
    assert out.dtype == torch.float32 and out.shape == (1, 3, 224, 224)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        clip_preprocess(torch.rand(3, 50, 70))
    with pytest.raises(TypeError, match="float tensor"):
        clip_preprocess(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="mode must be"):
        clip_preprocess(x, mode="letterbox")
    with pytest.raises(ValueError, match="RGB"):
        clip_preprocess(torch.rand(1, 4, 8, 8))
    with pytest.raises(ValueError, match="interpolation"):
        resize_to(x, (10, 10), "lanczos")

