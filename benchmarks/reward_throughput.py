"""Reward scoring of image files: rewardflow's batched file path vs the official packages' call pattern.

    python benchmarks/reward_throughput.py [--rewards hpsv2.1,imagereward,pickscore,clip,aesthetic]
        [--images 64] [--batch-sizes 1,2,4,8,16,32,64] [--threads 1] [--device cpu]
        [--weights NAME=PATH ...] [--kwarg NAME:KEY=VALUE ...] [--out benchmarks/results/reward_throughput.json]

Both sides read the same ``--images`` PNG files (odd sizes from 97 to 768 pixels, smooth gradients plus hard-edged
shapes) with the same prompt per file, and run the same model object (equal model):

* ``rewardflow``: what ``rewardflow score --batch-size B`` does -- decode ``B`` files
  (:func:`rewardflow.io.images.open_image`) and call :meth:`Reward.score_files` once (the official preprocessing,
  one batched forward, text features cached per prompt), for every ``B`` in ``--batch-sizes``;
* ``official``: the call pattern of the official packages, written from their code: per file ``Image.open``, the
  official PIL / torchvision preprocessing, tokenise the prompt and run one forward of image and text; the
  checkpoint is loaded once (``hpsv2.score`` reloads it on every call, a cost left out here).
  hpsv2 / hpsv2.1: ``hpsv2/img_score.py`` with ``image_transform(..., resize_longest_max=True)``; imagereward:
  ``ImageReward.score``; pickscore: the PickScore README (``AutoProcessor`` = the PIL image processor,
  ``get_image_features`` / ``get_text_features``, ``logit_scale.exp() * cos``); clipscore: jmhessel/clipscore
  (``_transform_test``, ``"A photo depicts "``, ``2.5 * max(cos, 0)``); clip: the same without prefix and weight;
  aesthetic: improved-aesthetic-predictor ``simple_inference.py`` (``clip.load`` transform, numpy L2 norm, MLP).

Parity is reported next to the speed: ``max |rewardflow - official|`` over the files for the file path and for
the tensor path (``reward(load_image(file)[None], [prompt])``, the differentiable preprocessing), and the number of
image pairs whose order differs from the official ranking.

Default models: tiny random-weight ones of the real architectures at 224 px, in the official file formats
(:mod:`rewardflow.testing.tiny_rewards`), so the whole run takes a few minutes on one CPU thread and mostly measures the
preprocessing. ``--weights NAME=PATH`` (repeatable) scores with a real checkpoint instead (``path=`` of the
reward: ``HPS_v2.1_compressed.pt``, the ImageReward directory, the PickScore ``save_pretrained`` directory, ...);
``--kwarg NAME:KEY=VALUE`` passes any other factory keyword (``--kwarg pickscore:processor=/ckpt/laion-proc``,
``--kwarg aesthetic:pretrained=/ckpt/ViT-L-14.pt``). A reward without ``--weights`` keeps its tiny model.

Timing: wall time (``time.perf_counter``) and process CPU time (``time.process_time``; with ``--threads 1`` what an
idle machine's wall time would be) of scoring all files, best of ``--repeats`` runs, after a warm-up of 2 files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_REWARDS = ("hpsv2.1", "imagereward", "pickscore", "clip", "aesthetic")
SIZES = [(512, 512), (300, 517), (640, 256), (387, 229), (224, 224), (97, 150), (224, 300), (768, 512),
         (333, 333), (180, 120), (256, 640), (229, 387), (450, 301), (129, 97), (512, 768), (600, 224)]
PROMPTS = ["a red circle and a blue square", "two green triangles on the left", "a photo of a cat on the grass",
           "a dog under a blue sky"]
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


# ---------------------------------------------------------------------------------------------------- inputs
def write_images(out: Path, n: int) -> list[tuple[Path, str]]:
    """``n`` PNGs of the sizes in :data:`SIZES` (cycled): a smooth colour field plus hard-edged shapes."""
    import numpy as np
    from PIL import Image, ImageDraw

    files = []
    for i in range(n):
        h, w = SIZES[i % len(SIZES)]
        rng = np.random.default_rng(i)
        yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
        phase = rng.uniform(0, 6, 3)
        field = np.stack([np.sin(4 * xx + 3 * yy + p) for p in phase], -1) * 60 + 128
        img = Image.fromarray(field.clip(0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(4):
            x0, y0 = int(rng.integers(0, w - 8)), int(rng.integers(0, h - 8))
            x1, y1 = x0 + int(rng.integers(6, max(8, w // 2))), y0 + int(rng.integers(6, max(8, h // 2)))
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=color)
        path = out / f"img{i:03d}_{h}x{w}.png"
        img.save(path)
        files.append((path, PROMPTS[i % len(PROMPTS)]))
    return files


def tiny_kwargs(name: str, root: Path) -> dict:
    """Factory keywords of the tiny official-format model for reward ``name`` (written under ``root``)."""
    from rewardflow.testing import tiny_rewards as _tiny

    clip_name = _tiny.register_tiny_open_clip(root / "open_clip_cfg")
    if name in ("hpsv2", "hpsv2.1"):
        return {"path": str(_tiny.write_hps_checkpoints(root / "hps", clip_name)), "model": clip_name}
    if name == "imagereward":
        return {"path": str(_tiny.write_imagereward(root / "imagereward"))}
    if name == "pickscore":
        return {"path": str(_tiny.write_hf_clip(root / "pickscore"))}
    if name in ("clip", "clipscore"):
        return {"path": str(_tiny.write_open_clip_checkpoint(root / "clip.pt", clip_name)), "model": clip_name}
    if name == "aesthetic":
        clip_ckpt = _tiny.write_open_clip_checkpoint(root / "aesthetic_clip.pt", clip_name, seed=3)
        head = _tiny.write_aesthetic_head(root / "sac+logos+ava1-l14-linearMSE.pth", 32)
        return {"path": str(head), "model": clip_name, "pretrained": str(clip_ckpt)}
    raise ValueError(f"no official call pattern for reward {name!r} here; choose from "
                     "hpsv2, hpsv2.1, imagereward, pickscore, clip, clipscore, aesthetic")


# ---------------------------------------------------------------------------------------------------- official
def _openai_transform(n_px: int):
    """openai/CLIP ``clip/clip.py`` ``_transform`` (= ImageReward ``_transform``, clipscore ``_transform_test``)."""
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

    return Compose([Resize(n_px, interpolation=InterpolationMode.BICUBIC), CenterCrop(n_px),
                    lambda image: image.convert("RGB"), ToTensor(), Normalize(OPENAI_MEAN, OPENAI_STD)])


def _hps_transform(n_px: int):
    """tgxs002/HPSv2 ``hpsv2/src/open_clip/transform.py`` ``image_transform(n_px, False, resize_longest_max=True)``:
    ``_convert_to_rgb_or_rgba``, ``ToTensor``, ``ResizeMaxSize`` (on the float tensor), ``Normalize``."""
    import torchvision.transforms.functional as F
    from torchvision.transforms import Compose, InterpolationMode, Normalize, ToTensor

    def resize_max_size(img):
        height, width = img.shape[1:]
        scale = n_px / float(max(height, width))
        if scale != 1.0:
            new_size = tuple(round(dim * scale) for dim in (height, width))
            img = F.resize(img, new_size, InterpolationMode.BICUBIC)
            pad_h, pad_w = n_px - new_size[0], n_px - new_size[1]
            img = F.pad(img, padding=[pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
        return img

    return Compose([lambda im: im if im.mode == "RGBA" else im.convert("RGB"), ToTensor(), resize_max_size,
                    Normalize(OPENAI_MEAN, OPENAI_STD)])


def official_scorer(name: str, reward, kwargs: dict, device: str):
    """``f(path, prompt) -> float``: one file scored the way the official package scores it, on ``reward``'s
    model (see the module docstring); ``kwargs``: the reward's factory keywords. Open_clip backbones only for
    clip / clipscore / aesthetic."""
    import numpy as np
    import torch
    from PIL import Image

    if name in ("hpsv2", "hpsv2.1", "clip", "clipscore"):
        model, tok = reward.backbone.model, reward.backbone.tokenizer
        size = model.visual.image_size
        size = int(size[0] if isinstance(size, (tuple, list)) else size)
        tf = _hps_transform(size) if name.startswith("hps") else _openai_transform(size)

        def f(path, prompt):
            image = tf(Image.open(path)).unsqueeze(0).to(device)
            text = tok([("A photo depicts " if name == "clipscore" else "") + prompt]).to(device)
            img = model.encode_image(image.to(reward.backbone.dtype), normalize=True).float()
            txt = model.encode_text(text, normalize=True).float()
            cos = float((img @ txt.T).diagonal()[0])
            return 2.5 * max(cos, 0.0) if name == "clipscore" else cos
        return f
    if name == "imagereward":
        tf = _openai_transform(reward.model.image_size)

        def f(path, prompt):
            t = reward.tokenizer(prompt, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
            image = tf(Image.open(path)).unsqueeze(0).to(device, reward.dtype)
            raw = reward.model(image, t.input_ids.to(device), t.attention_mask.to(device))
            return float((raw - 0.16717362830052426) / 1.0333394966054072)
        return f
    if name == "pickscore":
        from rewardflow.rewards.clip import load_pil_image_processor

        model, tok = reward.backbone.model, reward.backbone.tokenizer
        proc = load_pil_image_processor(kwargs.get("processor") or kwargs["path"])

        def f(path, prompt):
            image_inputs = proc(images=[Image.open(path)], return_tensors="pt")
            text_inputs = tok(prompt, padding=True, truncation=True, max_length=77, return_tensors="pt")
            img = model.get_image_features(pixel_values=image_inputs["pixel_values"].to(device, reward.backbone.dtype))
            txt = model.get_text_features(input_ids=text_inputs["input_ids"].to(device),
                                          attention_mask=text_inputs["attention_mask"].to(device))
            img, txt = (getattr(o, "pooler_output", o).float() for o in (img, txt))
            img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
            return float(model.logit_scale.exp().float() * (txt @ img.T)[0, 0])
        return f
    if name == "aesthetic":
        model = reward.backbone.model
        tf = _openai_transform(int(model.visual.image_size[0] if isinstance(model.visual.image_size, (tuple, list))
                                   else model.visual.image_size))

        def f(path, prompt):
            image = tf(Image.open(path)).unsqueeze(0).to(device, reward.backbone.dtype)
            feats = model.encode_image(image).float().cpu().numpy()
            feats = feats / np.expand_dims(np.linalg.norm(feats, 2, -1), -1)  # simple_inference.py normalized()
            return float(reward.head(torch.from_numpy(feats).to(device).float())[0, 0])
        return f
    raise ValueError(f"no official call pattern for reward {name!r}")


# ---------------------------------------------------------------------------------------------------- timing
def _timed(fn, repeats: int):
    best = None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        best = (wall, cpu, out) if best is None or wall < best[0] else best
    return best


def discordant_pairs(a, b) -> int:
    """Image pairs ordered one way by ``a`` and the other way by ``b`` (ties in either count as agreement)."""
    n = len(a)
    return sum(1 for i in range(n) for j in range(i + 1, n) if (a[i] - a[j]) * (b[i] - b[j]) < 0)


def bench_reward(name: str, kwargs: dict, files, batch_sizes: list[int], repeats: int, device: str) -> dict:
    import torch

    from rewardflow.io.images import load_image, open_image
    from rewardflow.rewards.base import load_reward

    reward = load_reward(name, **kwargs).to(device).eval()
    official = official_scorer(name, reward, kwargs, device)
    prompts = [p for _, p in files]

    def run_official():
        with torch.no_grad():
            return [official(str(f), p) for f, p in files]

    def run_rewardflow(b):
        out = []
        for s in range(0, len(files), b):
            chunk = files[s:s + b]
            out += reward.score_files([open_image(f) for f, _ in chunk], [p for _, p in chunk])[
                reward.primary_head].tolist()
        return out

    with torch.no_grad():  # warm-up: first-call allocations
        [official(str(f), p) for f, p in files[:2]]
        reward.score_files([open_image(f) for f, _ in files[:2]], prompts[:2])
    wall, cpu, ref = _timed(run_official, repeats)
    res = {"official": {"images_per_s_wall": len(files) / wall, "images_per_s_cpu": len(files) / cpu},
           "rewardflow": {}}
    for b in batch_sizes:
        if hasattr(reward, "backbone"):
            reward.backbone.clear_text_cache()  # every run pays for its text features once
        w, c, scores = _timed(lambda: run_rewardflow(b), repeats)
        res["rewardflow"][str(b)] = {"images_per_s_wall": len(files) / w, "images_per_s_cpu": len(files) / c,
                                     "speedup_wall": wall / w, "speedup_cpu": cpu / c}
    with torch.no_grad():
        tensor = [float(reward(load_image(f)[None].to(device), [p])) for f, p in files]
    res["parity"] = {"max_abs_diff_file_path": max(abs(a - b) for a, b in zip(scores, ref)),
                     "max_abs_diff_tensor_path": max(abs(a - b) for a, b in zip(tensor, ref)),
                     "score_range": max(ref) - min(ref),
                     "discordant_pairs_file_path": discordant_pairs(scores, ref),
                     "discordant_pairs_tensor_path": discordant_pairs(tensor, ref),
                     "pairs": len(ref) * (len(ref) - 1) // 2}
    return res


def _parse_kwargs(weights: list[str], extra: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for w in weights:
        name, sep, path = w.partition("=")
        if not sep or not path:
            raise SystemExit(f"--weights {w!r}: write NAME=PATH")
        out.setdefault(name, {})["path"] = path
    for k in extra:
        name, sep, kv = k.partition(":")
        key, sep2, value = kv.partition("=")
        if not sep or not sep2:
            raise SystemExit(f"--kwarg {k!r}: write NAME:KEY=VALUE")
        out.setdefault(name, {})[key] = value
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rewards", default=",".join(DEFAULT_REWARDS))
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch-sizes", default="1,2,4,8,16,32,64")
    ap.add_argument("--repeats", type=int, default=1, help="runs per measurement, best kept (default 1)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--weights", action="append", default=[], metavar="NAME=PATH")
    ap.add_argument("--kwarg", action="append", default=[], metavar="NAME:KEY=VALUE")
    ap.add_argument("--out", default=str(RESULTS / "reward_throughput.json"))
    args = ap.parse_args()
    import torch

    if args.images < 2 or args.repeats < 1 or args.threads < 1:
        raise SystemExit("--images must be >= 2, --repeats and --threads >= 1")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if any(b < 1 for b in batch_sizes):
        raise SystemExit(f"--batch-sizes must be positive, got {args.batch_sizes}")
    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.rewards.split(",") if n.strip()]
    given = _parse_kwargs(args.weights, args.kwarg)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        files = write_images(tmp / "images", args.images)
        for name in names:
            kw = given[name] if "path" in given.get(name, {}) else {**tiny_kwargs(name, tmp / "models"),
                                                                     **given.get(name, {})}
            t0 = time.perf_counter()
            results[name] = bench_reward(name, kw, files, batch_sizes, args.repeats, args.device)
            results[name]["model"] = ("checkpoint " + kw["path"] if "path" in given.get(name, {}) else
                                      "tiny random weights (rewardflow.testing.tiny_rewards)")
            print(f"[{name}: {time.perf_counter() - t0:.0f}s]", file=sys.stderr)

    device = args.device if args.device == "cpu" else torch.cuda.get_device_name(0)
    report = {"config": {"images": args.images, "batch_sizes": batch_sizes, "threads": args.threads,
                         "repeats": args.repeats, "device": device,
                         "image_sizes": sorted({f"{h}x{w}" for h, w in SIZES[:args.images]})},
              "command": " ".join(["python", os.path.relpath(__file__)] + sys.argv[1:]), "rewards": results}
    print(f"{args.images} PNG files of odd sizes, {args.threads} thread(s), {device}; images/s from process CPU time "
          "(= idle-machine wall time with 1 thread); speedup = rewardflow / official (CPU time; wall in brackets)")
    head = "".join(f"{'B=' + str(b):>8s}" for b in batch_sizes)
    print(f"{'reward':12s} {'official':>9s} {head}  {'best speedup':>20s}  {'max|d| file':>11s} "
          f"{'max|d| tensor':>13s} {'swaps f/t':>9s}")
    for name, r in results.items():
        rf = r["rewardflow"]
        best = max(rf, key=lambda b: rf[b]["speedup_cpu"])
        row = "".join(f"{rf[str(b)]['images_per_s_cpu']:8.1f}" for b in batch_sizes)
        par = r["parity"]
        speed = f"{rf[best]['speedup_cpu']:.2f}x ({rf[best]['speedup_wall']:.2f}x) B={best}"
        print(f"{name:12s} {r['official']['images_per_s_cpu']:9.1f} {row}  {speed:>20s}  "
              f"{par['max_abs_diff_file_path']:11.1e} {par['max_abs_diff_tensor_path']:13.1e} "
              f"{par['discordant_pairs_file_path']:>4d}/{par['discordant_pairs_tensor_path']:<4d}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
