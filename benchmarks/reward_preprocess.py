"""CLIP-family reward scoring throughput: batched torch preprocessing vs the per-image PIL path of the official
packages, on the same random-weight open_clip model.

    python benchmarks/reward_preprocess.py [--images 256] [--res 512] [--batch 32] [--threads 1] [--model small]

Every path scores the same ``--images`` float images in [0, 1] (``--res`` x ``--res``, as a generator returns
them), ``--batch`` at a time, against a cached text embedding, with the same model:

* ``torch``: :class:`rewardflow.rewards.clip.CLIPReward` -- one batched, differentiable ``clip_preprocess`` call
  (antialiased bicubic resize of the whole batch + centre crop + normalise), then ``encode_image`` on the batch.
* ``pil``: what the official scorers do with generator tensors (hpsv2 / PickScore / clipscore): each image to uint8
  numpy to ``PIL.Image``, open_clip's eval transform (``Resize(224, bicubic)``, ``CenterCrop``, ``ToTensor``,
  ``Normalize``), ``torch.stack``, then the same batched ``encode_image``. The headline ratio is torch / pil.
* ``pil_loop``: what ``hpsv2.score`` / ``ImageReward.score`` do: the same PIL preprocessing and one forward per
  image (reported for information).

``--model small`` is a registered open_clip ViT (224 px, patch 32, width 128, 2 layers; random weights) so that the
benchmark runs on CPU in a few minutes and measures the preprocessing rather than the transformer;
``--model ViT-B-32`` uses the CLIPScore architecture (random weights), where the forward dominates on CPU.

Timing: the paths run interleaved batch by batch in one process (so other load on a shared machine hits them
alike); each path reports the median over batches of the wall time and of the process CPU time
(``time.process_time``; with ``--threads 1`` it is what an idle machine's wall time would be), and the speedups
for both. Memory: each path also runs once in a fresh subprocess; ``peak_rss_mb`` is its peak RSS and
``scoring_rss_growth_mb`` the peak during scoring minus the RSS when scoring starts, i.e. the working memory of the
path (Linux: peak reset via ``/proc/self/clear_refs`` after importing torch/open_clip (~0.8 GB), building the model
and the images). Writes ``benchmarks/results/reward_preprocess.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RESULTS = Path(__file__).resolve().parent / "results"
SMALL = "rf-bench-small-clip"
SMALL_CFG = {"embed_dim": 64,
             "vision_cfg": {"image_size": 224, "layers": 2, "width": 128, "head_width": 64, "patch_size": 32},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
PROMPT = "a photo of a red circle and a blue square"
PATHS = ("pil", "pil_loop", "torch")


def _images(n: int, res: int):
    """Smooth random images, uint8-exact so that every path sees identical pixels (stored as uint8)."""
    import torch
    import torch.nn.functional as F

    low = torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    return torch.cat([(F.interpolate(low[i: i + 16], size=(res, res), mode="bicubic", align_corners=False)
                       .clamp(0, 1) * 255).round().byte() for i in range(0, n, 16)])


def _scorers(model_name: str):
    """The model and one scoring function per path (all under the same weights and cached text embedding)."""
    import numpy as np
    import open_clip
    import torch
    from PIL import Image

    from rewardflow.rewards.clip import CLIPReward, OpenCLIPBackbone, open_clip_spec

    if model_name == "small":
        d = tempfile.mkdtemp()
        Path(d, f"{SMALL}.json").write_text(json.dumps(SMALL_CFG))
        open_clip.add_model_config(d)
        model_name = SMALL
    torch.manual_seed(0)
    model = open_clip.create_model(model_name).eval()
    backbone = OpenCLIPBackbone(model, open_clip.get_tokenizer(model_name), open_clip_spec(model))
    reward = CLIPReward(backbone)
    text = backbone.encode_text([PROMPT])
    official = open_clip.image_transform(backbone.preprocess.size, is_train=False)

    def to_pil(x):  # float [B,3,H,W] in [0, 1] -> PIL images, as a user of the official packages must
        u8 = (x * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return [Image.fromarray(np.ascontiguousarray(a)) for a in u8]

    def encode(pix):
        return (torch.nn.functional.normalize(model.encode_image(pix).float(), dim=-1) * text).sum(-1)

    fns = {
        "torch": lambda x: reward(x, [PROMPT] * len(x)),
        "pil": lambda x: encode(torch.stack([official(im) for im in to_pil(x)])),
        "pil_loop": lambda x: torch.cat([encode(official(im)[None]) for im in to_pil(x)]),
    }
    preprocess = {
        "torch": backbone.preprocess,
        "pil": lambda x: torch.stack([official(im) for im in to_pil(x)]),
    }
    return fns, preprocess


def _status_mb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _memory_child(path: str, args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    fns, _ = _scorers(args.model)
    images = _images(args.images, args.res)
    with torch.no_grad():
        fns[path](images[: args.batch].float() / 255)  # warm-up
        try:  # reset the peak RSS (VmHWM) so that the scoring peak can be read on its own
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            start = _status_mb("VmRSS")
        except OSError:
            start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        for i in range(0, args.images, args.batch):
            fns[path](images[i: i + args.batch].float() / 255)
    peak = _status_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mb": max(peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                      "scoring_rss_growth_mb": peak - start}))


def _timing(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    fns, preprocess = _scorers(args.model)
    images = _images(args.images, args.res)
    wall = {p: [] for p in PATHS}
    cpu = {p: [] for p in PATHS}
    pre = {p: [] for p in preprocess}
    scores = {p: [] for p in PATHS}
    with torch.no_grad():
        for p in PATHS:  # warm-up
            fns[p](images[: args.batch].float() / 255)
        for b, i in enumerate(range(0, args.images, args.batch)):
            x = images[i: i + args.batch].float() / 255  # what a generator hands over: float in [0, 1]
            order = PATHS[b % len(PATHS):] + PATHS[: b % len(PATHS)]  # rotate who goes first
            for p in order:
                t0, c0 = time.perf_counter(), time.process_time()
                scores[p].append(fns[p](x))
                wall[p].append((time.perf_counter() - t0) / len(x))
                cpu[p].append((time.process_time() - c0) / len(x))
            for p, f in preprocess.items():  # preprocessing alone, to show where the time goes
                c0 = time.process_time()
                f(x)
                pre[p].append((time.process_time() - c0) / len(x))
    med = statistics.median
    ref = torch.cat(scores["pil"])
    out = {p: {"images_per_s_cpu": 1 / med(cpu[p]), "images_per_s_wall": 1 / med(wall[p]),
               "max_abs_score_diff_vs_pil": float((torch.cat(scores[p]) - ref).abs().max())} for p in PATHS}
    for p in pre:
        out[p]["preprocess_cpu_ms_per_image"] = 1e3 * med(pre[p])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--res", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default="small", help="'small' (registered tiny ViT) or an open_clip model name")
    ap.add_argument("--out", default=str(RESULTS / "reward_preprocess.json"))
    ap.add_argument("--memory-child", choices=PATHS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        return _memory_child(args.memory_child, args)

    res = _timing(args)
    for p in PATHS:
        cmd = [sys.executable, __file__, "--memory-child", p, f"--images={args.images}", f"--res={args.res}",
               f"--batch={args.batch}", f"--threads={args.threads}", f"--model={args.model}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                              env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        if proc.returncode != 0:
            sys.exit(f"memory run of {p} failed:\n{proc.stderr}")
        res[p].update(json.loads(proc.stdout.strip().splitlines()[-1]))

    t, pil = res["torch"], res["pil"]
    speedup = {"cpu_time": t["images_per_s_cpu"] / pil["images_per_s_cpu"],
               "wall": t["images_per_s_wall"] / pil["images_per_s_wall"],
               "preprocess_only_cpu_time": pil["preprocess_cpu_ms_per_image"] / t["preprocess_cpu_ms_per_image"],
               "cpu_time_vs_pil_loop": t["images_per_s_cpu"] / res["pil_loop"]["images_per_s_cpu"]}
    report = {"config": {k: getattr(args, k) for k in ("images", "res", "batch", "threads", "model")},
              "device": "cpu", "command": " ".join(["python", os.path.relpath(__file__)] + sys.argv[1:]),
              "paths": res, "speedup_torch_vs_pil": speedup, "target_speedup": 3.0}
    print(f"{args.images} images {args.res}x{args.res}, batch {args.batch}, {args.threads} thread(s), "
          f"model {args.model} (random weights), CPU")
    print(f"{'path':9s} {'img/s (cpu)':>11s} {'img/s (wall)':>12s} {'preproc ms/img':>15s} {'peak RSS MB':>12s} "
          f"{'scoring +RSS MB':>16s}")
    for p in PATHS:
        r = res[p]
        pre = f"{r['preprocess_cpu_ms_per_image']:15.2f}" if "preprocess_cpu_ms_per_image" in r else f"{'':15s}"
        print(f"{p:9s} {r['images_per_s_cpu']:11.1f} {r['images_per_s_wall']:12.1f} {pre} {r['peak_rss_mb']:12.0f} "
              f"{r['scoring_rss_growth_mb']:16.0f}")
    print(f"speedup torch/pil: {speedup['cpu_time']:.2f}x CPU time, {speedup['wall']:.2f}x wall, preprocessing "
          f"alone {speedup['preprocess_only_cpu_time']:.2f}x; torch/pil_loop {speedup['cpu_time_vs_pil_loop']:.2f}x "
          f"(target >= 3x); max |score - pil score| {t['max_abs_score_diff_vs_pil']:.1e}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
