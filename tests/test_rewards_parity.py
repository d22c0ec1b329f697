"""File inputs score exactly as the official packages; the tensor (differentiable) path stays within a stated bound.

One test per image reward. Each model is tiny and random, of the real architecture at the real input size (224),
saved in the official file format (``rewardflow.testing.tiny_rewards``) and loaded through the real loader. The reference
is the official preprocessing written out step by step (``test_transforms``: PIL calls for the PIL pipelines,
torchvision tensor ops for HPSv2 and VLM-RM) followed by the raw model, run on the same batch as the reward so that
only the preprocessing can differ. The images cover the official geometry's edge cases: already 224 x 224, longest
side already 224 but not square, shorter side already 224, down- and up-scaling with odd excesses, and RGBA /
grey / palette files.

Bounds (on these models and images; the pixel-level bound of the tensor path, <= 2 uint8 levels at every pixel and
~0.1-0.2 on average, is checked in ``test_transforms``):

* file path: |score - reference| <= 1e-6 (PickScore: 1e-6 on the cosine, i.e. 1e-6 * logit_scale on the score),
  and the ranking of the images is the reference's;
* tensor path (``reward(float_tensor, prompts)``): HPSv2 / VLM-RM equal the reference (<= 1e-6: their official
  pipelines resize the float tensor, which the tensor path reproduces); the PIL pipelines (CLIP, CLIPScore,
  ImageReward, PickScore, aesthetic, lambda-Harmonic) differ by 8-bit rounding only: bounds in ``TENSOR_BOUND``.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from test_transforms import _hpsv2_reference, hf_processor_reference, openai_clip_reference, vlm_rm_reference

from rewardflow.io.images import pil_to_tensor
from rewardflow.testing import tiny_rewards as _tiny
from rewardflow.rewards.base import load_reward

IR_MEAN, IR_STD = 0.16717362830052426, 1.0333394966054072  # ImageReward/ImageReward.py
FILE_TOL = 1e-6
# max |tensor path - file path| on the RGB images: measured value x ~2 (measured; score range over the images)
TENSOR_BOUND = {"clip": 1e-3,  # 4.0e-4; 0.22
                "clipscore_cos": 4e-3,  # 1.9e-3; 0.11 (the cosine; CLIP-S = 2.5 * max(cos, 0))
                "imagereward": 4e-3,  # 1.8e-3; 0.65
                "pickscore": 5e-3,  # 2.5e-3; 7.7 (logit_scale = e^3)
                "aesthetic": 1e-3,  # 3.3e-4; 0.086
                "lambda_harmonic": 2e-4}  # 9.4e-5; 0.12
# (H, W): already 224; longest side 224, not square; shorter side 224; downscale odd excess; upscale; tall; wide
SIZES = [(224, 224), (160, 224), (224, 300), (517, 300), (97, 150), (387, 229), (256, 640)]
PROMPTS = ["a red circle", "two blue squares", "a green triangle on the left", "a photo of a cat",
           "a dog on the grass", "the blue sky", "a red square"]


def _scene(h, w, seed):
    """A smooth colour field with hard-edged shapes (the bicubic overshoot and PIL's clipping both matter)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    field = np.stack([np.sin(4 * xx + 3 * yy + p) for p in rng.uniform(0, 6, 3)], -1) * 60 + 128
    img = Image.fromarray(field.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, w - 8)), int(rng.integers(0, h - 8))
        box = [x0, y0, x0 + int(rng.integers(6, w // 2)), y0 + int(rng.integers(6, h // 2))]
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=tuple(int(c) for c in
                                                                                  rng.integers(0, 256, 3)))
    return img


@pytest.fixture(scope="module")
def images():
    ims = [_scene(h, w, i) for i, (h, w) in enumerate(SIZES)]
    rgba = _scene(200, 300, 20)
    rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 300), (200, 1)).round().astype(np.uint8)))
    grey = _scene(180, 150, 21).convert("L")
    palette = _scene(240, 170, 22).convert("P", palette=Image.ADAPTIVE, colors=48)
    return ims + [rgba, grey, palette]


def _prompts(n):
    return [PROMPTS[i % len(PROMPTS)] for i in range(n)]


def _cos(a, b):
    return (F.normalize(a.float(), dim=-1) * F.normalize(b.float(), dim=-1)).sum(-1)


def _check(file_scores, want, tensor_scores, tensor_bound, tol=FILE_TOL):
    """File path == reference (and the same ranking); tensor path within ``tensor_bound`` of it on the RGB images
    (``tensor_scores`` covers them only: an RGBA / palette file is not the RGB tensor it converts to -- PickScore
    composites on white, PIL resizes a palette image with nearest neighbour -- so only the file path applies)."""
    torch.testing.assert_close(file_scores, want, rtol=0, atol=tol)
    assert torch.equal(torch.argsort(file_scores), torch.argsort(want))  # identical ranking
    assert float(want.max() - want.min()) > 100 * tol  # the scores do depend on the images
    diff = float((tensor_scores - file_scores[:len(tensor_scores)]).abs().max())
    assert diff <= tensor_bound, diff
    return diff


def _tensor_path(reward, pils, prompts):
    """``reward(float_tensor)`` one image at a time, on the RGB images (the tensor path's input)."""
    with torch.no_grad():
        return torch.cat([reward(pil_to_tensor(p)[None], [q]) for p, q in zip(pils, prompts) if p.mode == "RGB"])


# ------------------------------------------------------------------------------------------------------------
# models
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    name = _tiny.register_tiny_open_clip(root / "cfg")
    return {"clip_name": name, "clip": _tiny.write_open_clip_checkpoint(root / "clip.pt", name, seed=1),
            "hps": _tiny.write_hps_checkpoints(root / "hps", name), "hf": _tiny.write_hf_clip(root / "hf"),
            "ir": _tiny.write_imagereward(root / "ir"),
            "aes_head": _tiny.write_aesthetic_head(root / "sac+logos+ava1-l14-linearMSE.pth", 32)}


def _open_clip(name, path):
    import open_clip

    model = open_clip.create_model(name).eval()
    sd = torch.load(path, weights_only=True)["state_dict"]
    model.load_state_dict({k: v.float() for k, v in sd.items()})
    return model, open_clip.get_tokenizer(name)


# ------------------------------------------------------------------------------------------------------------
# open_clip family
# ------------------------------------------------------------------------------------------------------------
def test_clip_and_clipscore_files_equal_openai_clip_transform(models, images):
    name = models["clip_name"]
    model, tok = _open_clip(name, models["clip"])
    prompts = _prompts(len(images))
    with torch.no_grad():
        img = model.encode_image(torch.stack([openai_clip_reference(p, 224) for p in images]))
        want = _cos(img, model.encode_text(tok(prompts)))
        want_cs = _cos(img, model.encode_text(tok(["A photo depicts " + p for p in prompts])))
    r = load_reward("clip", path=str(models["clip"]), model=name)
    _check(r.score_files(images, prompts)["score"], want, _tensor_path(r, images, prompts), TENSOR_BOUND["clip"])
    cs = load_reward("clipscore", path=str(models["clip"]), model=name)
    with torch.no_grad():
        cos_files = cs.cosine(images, prompts)
        cos_tensor = torch.cat([cs.cosine(pil_to_tensor(p)[None], [q]) for p, q in zip(images, prompts)])
    _check(cos_files, want_cs, cos_tensor, TENSOR_BOUND["clipscore_cos"])
    torch.testing.assert_close(cs.score_files(images, prompts)["score"], 2.5 * want_cs.clamp_min(0), rtol=0,
                               atol=FILE_TOL)


@pytest.mark.parametrize("name,fname", [("hpsv2", "HPS_v2_compressed.pt"), ("hpsv2.1", "HPS_v2.1_compressed.pt")])
def test_hps_files_equal_official_transform_without_clamp(models, images, name, fname):
    model, tok = _open_clip(models["clip_name"], models["hps"] / fname)
    prompts = _prompts(len(images))
    pix = []
    for p in images:
        x = _hpsv2_reference(p, 224)
        if x.shape[-2:] != (224, 224):  # longest side already 224: the official class neither resizes nor pads,
            assert max(x.shape[-2:]) == 224  # and its ViT cannot take that; rewardflow pads (zeros before Normalize)
            ph, pw = 224 - x.shape[-2], 224 - x.shape[-1]
            black = torch.tensor((0.48145466, 0.4578275, 0.40821073)) / -torch.tensor(
                (0.26862954, 0.26130258, 0.27577711))
            x = torch.stack([F.pad(c, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=float(b))
                             for c, b in zip(x, black)])
        pix.append(x)
    with torch.no_grad():
        want = _cos(model.encode_image(torch.stack(pix)), model.encode_text(tok(prompts)))
    r = load_reward(name, path=str(models["hps"]), model=models["clip_name"])
    tensor = _tensor_path(r, images, prompts)
    _check(r.score_files(images, prompts)["score"], want, tensor, FILE_TOL)
    torch.testing.assert_close(tensor, want[:len(tensor)], rtol=0, atol=FILE_TOL)  # a tensor pipeline officially


def test_vlm_rm_files_equal_official_transform(models, images):
    name = models["clip_name"]
    model, tok = _open_clip(name, models["clip"])
    goal, baseline, alpha = ["a red circle", "one red circle"], ["a circle", "a shape"], 0.5
    prompts = ["ignored"] * len(images)
    with torch.no_grad():
        x = F.normalize(model.encode_image(torch.stack([vlm_rm_reference(p, 224) for p in images])), dim=-1)
        g = F.normalize(model.encode_text(tok(goal)), dim=-1).mean(0)
        b = F.normalize(model.encode_text(tok(baseline)), dim=-1).mean(0)
    d = (g - b)[None]
    proj = alpha * (d.T @ d) / (d @ d.T) + (1 - alpha) * torch.eye(d.shape[1])
    want = 1 - 0.5 * ((x - g) @ proj).pow(2).sum(-1)
    r = load_reward("vlm_rm", path=str(models["clip"]), model=name, goal=goal, baseline=baseline, alpha=alpha)
    tensor = _tensor_path(r, images, prompts)
    _check(r.score_files(images, prompts)["score"], want, tensor, FILE_TOL)


def test_aesthetic_files_equal_clip_load_transform(models, images):
    name = models["clip_name"]
    model, _ = _open_clip(name, models["clip"])
    head = torch.load(models["aes_head"], weights_only=True)
    with torch.no_grad():
        emb = model.encode_image(torch.stack([openai_clip_reference(p, 224) for p in images]))
        h = emb / emb.norm(dim=-1, keepdim=True)  # simple_inference.py normalized()
        for i in (0, 2, 4, 6, 7):  # the MLP: linear layers only, dropouts off
            h = F.linear(h, head[f"layers.{i}.weight"], head[f"layers.{i}.bias"])
    want = h[:, 0]
    r = load_reward("aesthetic", path=str(models["aes_head"]), model=name, pretrained=str(models["clip"]))
    prompts = [""] * len(images)
    _check(r.score_files(images, prompts)["score"], want, _tensor_path(r, images, prompts),
           TENSOR_BOUND["aesthetic"])


# ------------------------------------------------------------------------------------------------------------
# transformers processors: PickScore, lambda-Harmonic
# ------------------------------------------------------------------------------------------------------------
def test_pickscore_files_equal_clip_processor(models, images):
    from transformers import CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(models["hf"]).eval()
    tok = CLIPTokenizer.from_pretrained(models["hf"])
    prompts = _prompts(len(images))
    with torch.no_grad():
        img = model.get_image_features(pixel_values=torch.stack([hf_processor_reference(p, 224)
                                                                 for p in images])).pooler_output
        t = tok(prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        txt = model.get_text_features(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).pooler_output
        scale = float(model.logit_scale.exp())
    want = scale * _cos(img, txt)
    r = load_reward("pickscore", path=str(models["hf"]))
    _check(r.score_files(images, prompts)["score"], want, _tensor_path(r, images, prompts),
           TENSOR_BOUND["pickscore"], tol=FILE_TOL * scale)


def test_lambda_harmonic_files_equal_clip_processor(models, images, tmp_path):
    from transformers import CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(models["hf"]).eval()
    tok = CLIPTokenizer.from_pretrained(models["hf"])
    refs, pils = images[:2], images[2:]  # reference images given as files
    prompts = _prompts(len(pils))
    with torch.no_grad():
        feats = lambda ims: F.normalize(model.get_image_features(pixel_values=torch.stack(  # noqa: E731
            [hf_processor_reference(p, 224) for p in ims])).pooler_output, dim=-1)
        img, ref = feats(pils), feats(refs)
        t = tok(prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        txt = model.get_text_features(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).pooler_output
    i_sim = ((img @ ref.T).mean(-1) + 1) / 2
    t_sim = (_cos(img, txt) + 1) / 2
    want = 1 / (0.3 / (i_sim + 1e-8) + 0.7 / (t_sim + 1e-8))
    paths = []
    for i, p in enumerate(refs):
        paths.append(tmp_path / f"ref{i}.png")
        p.save(paths[-1])
    r = load_reward("lambda_harmonic", path=str(models["hf"]), references=[str(p) for p in paths], lam=0.3)
    _check(r.score_files(pils, prompts)["score"], want, _tensor_path(r, pils, prompts),
           TENSOR_BOUND["lambda_harmonic"])


# ------------------------------------------------------------------------------------------------------------
# ImageReward
# ------------------------------------------------------------------------------------------------------------
def test_imagereward_files_equal_blip_transform(models, images):
    from transformers import BertTokenizer

    r = load_reward("imagereward", path=str(models["ir"]))
    prompts = _prompts(len(images))
    tok = BertTokenizer.from_pretrained(models["ir"])  # + BLIP's [DEC] / [ENC], which these prompts never use
    t = tok(prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    with torch.no_grad():
        pix = torch.stack([openai_clip_reference(p, 224) for p in images])  # ImageReward.py _transform(224)
        want = (r.model(pix, t["input_ids"], t["attention_mask"]) - IR_MEAN) / IR_STD
    _check(r.score_files(images, prompts)["score"], want, _tensor_path(r, images, prompts),
           TENSOR_BOUND["imagereward"])


# ------------------------------------------------------------------------------------------------------------
# the mechanism: fallback, weighted sums, input checks
# ------------------------------------------------------------------------------------------------------------
def test_weighted_sum_scores_each_component_through_its_file_path(models, images):
    from rewardflow.rewards.combine import build_reward

    kw = {"hpsv2.1": {"path": str(models["hps"]), "model": models["clip_name"]}, "imagereward": {"path": str(
        models["ir"])}}
    w = build_reward("hpsv2.1:5,imagereward:1", **kw)
    prompts = _prompts(len(images))
    heads = w.score_files(images, prompts)
    hps = load_reward("hpsv2.1", **kw["hpsv2.1"]).score_files(images, prompts)["score"]
    ir = load_reward("imagereward", **kw["imagereward"]).score_files(images, prompts)["score"]
    torch.testing.assert_close(heads["hpsv2.1#0"], hps, rtol=0, atol=FILE_TOL)
    torch.testing.assert_close(heads["imagereward#1"], ir, rtol=0, atol=FILE_TOL)
    torch.testing.assert_close(heads["score"], 5 * hps + ir, rtol=0, atol=1e-5)


def test_default_file_path_is_the_tensor_path_grouped_by_size(images):
    from rewardflow.rewards.base import Reward

    class MeanRed(Reward):  # a reward without official file preprocessing: it gets RGB float tensors
        name = "mean_red"
        calls: list = []

        def score(self, media, prompts):
            self.calls.append(tuple(media.shape))
            return media[:, 0].mean((-1, -2))

    r = MeanRed()
    pils = [images[0], images[1], images[0].copy(), images[-3]]  # two of one size, RGBA dropped to RGB
    got = r.score_files(pils, ["x"] * 4)["score"]
    want = torch.stack([pil_to_tensor(p)[0].mean() for p in pils])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-7)
    assert sorted(MeanRed.calls) == sorted([(2, 3, 224, 224), (1, 3, 160, 224), (1, 3, 200, 300)])
    with pytest.raises(ValueError, match="4 media but 3 prompts"):
        r.score_files(pils, ["x"] * 3)
    with pytest.raises(TypeError, match="PIL images decoded from files"):
        r.score_files([pil_to_tensor(pils[0])], ["x"])
    with pytest.raises(ValueError, match="no media"):
        r.score_files([], [])


@pytest.mark.slow  # ~12 s: a subprocess that builds three tiny models
def test_reward_throughput_benchmark_runs_and_agrees(tmp_path):
    """benchmarks/reward_throughput.py on 4 files: its own transcription of the official call pattern agrees with
    the file path (and the JSON has the figures the docs quote)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "rt.json"
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, str(root / "benchmarks" / "reward_throughput.py"), "--images", "4",
                          "--batch-sizes", "1,4", "--rewards", "hpsv2.1,imagereward,pickscore", "--out", str(out)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads(out.read_text())
    for name in ("hpsv2.1", "imagereward", "pickscore"):
        r = doc["rewards"][name]
        assert r["parity"]["max_abs_diff_file_path"] < 1e-5 and r["parity"]["discordant_pairs_file_path"] == 0
        assert set(r["rewardflow"]) == {"1", "4"} and r["official"]["images_per_s_wall"] > 0
        assert r["rewardflow"]["4"]["speedup_wall"] > 0
    assert "imagereward" in res.stdout and "wrote" in res.stdout
