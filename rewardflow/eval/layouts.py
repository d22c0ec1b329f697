"""Write generated images in the folder layouts external evaluators read.

* ``plain``: ``OUT/images/{i:05d}.png`` + ``OUT/manifest.json``, the media manifest of
  :mod:`rewardflow.io.manifest` (one ``{"file": "images/00000.png", "prompt", "prompt_index", "sample_index", ...}``
  row per image; ``rewardflow score --prompts OUT/manifest.json`` reads it).
* ``geneval``: GenEval (``djghosh13/geneval``, ``generation/diffusers_generate.py`` writes and
  ``evaluation/evaluate_images.py`` reads): ``OUT/{prompt_index:05d}/metadata.jsonl`` holding the prompt's metadata
  line (the object from ``evaluation_metadata.jsonl``; ``{"prompt": ...}`` for plain prompts) and
  ``OUT/{prompt_index:05d}/samples/{sample:04d}.png``.
* ``t2i-compbench``: T2I-CompBench (``Karine-Huang/T2I-CompBench`` evaluation scripts read
  ``OUT/samples/{prompt}_{index:06d}.png``, the prompt recovered from the file name).
* ``vbench`` (videos ``[N, T, 3, H, W]``): VBench (``Vchitect/VBench``, ``prompts/README.md``: 5 samples per prompt,
  ``$prompt-$index.mp4`` with index 0-4, one folder per dimension; the evaluator matches files to its prompt
  lists by name): ``OUT/{prompt}-{index}.mp4``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from rewardflow.eval.layout_names import LAYOUTS, VIDEO_LAYOUTS
from rewardflow.io.manifest import write_manifest
from rewardflow.io.video import save_video


def save_png(img: torch.Tensor, path: str | Path) -> None:
    """``[3, H, W]`` float in [0, 1] -> 8-bit PNG."""
    arr = (img.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy())
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def write_layout(images: torch.Tensor, prompts: Sequence[str], out: str | Path, layout: str = "plain",
                 sample_index: Sequence[int] | None = None, metadata: Sequence[dict] | None = None,
                 extra: Sequence[dict] | None = None, info: dict | None = None) -> list[str]:
    """Write ``images[i]`` for ``prompts[i]``; ``sample_index[i]`` numbers several samples of one prompt
    (default 0). Returns the written file paths. ``vbench`` takes videos ``[N, T, 3, H, W]`` (``fps`` from
    ``extra[i]["fps"]``, default 8), the other layouts images ``[N, 3, H, W]``. ``plain``: ``extra[i]`` is merged
    into image i's manifest row and ``info`` into the manifest."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    is_video = images.ndim == 5
    if is_video != (layout in VIDEO_LAYOUTS):
        kind = "videos [N, T, 3, H, W]" if layout in VIDEO_LAYOUTS else "images [N, 3, H, W]"
        other = ", ".join(VIDEO_LAYOUTS) if is_video else ", ".join(x for x in LAYOUTS if x not in VIDEO_LAYOUTS)
        raise ValueError(f"layout {layout!r} takes {kind}, got shape {tuple(images.shape)}; use one of: {other}")
    prompts = list(prompts)
    if len(prompts) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
    out = Path(out)
    sample_index = list(sample_index) if sample_index is not None else [0] * len(prompts)
    files = []
    if layout == "plain":
        rows = []
        for i, p in enumerate(prompts):
            f = out / "images" / f"{i:05d}.png"
            save_png(images[i], f)
            row = {"file": f.relative_to(out).as_posix(), "prompt": p, "prompt_index": i,
                   "sample_index": sample_index[i]}
            row.update((extra or [{}] * len(prompts))[i])
            rows.append(row)
            files.append(str(f))
        write_manifest(out, rows, "image", info)
    elif layout == "geneval":
        order = list(dict.fromkeys(prompts))  # prompt index = order of first appearance
        for i, p in enumerate(prompts):
            d = out / f"{order.index(p):05d}"
            meta = (metadata[i] if metadata is not None else {"prompt": p})
            (d / "samples").mkdir(parents=True, exist_ok=True)
            (d / "metadata.jsonl").write_text(json.dumps(meta) + "\n")
            f = d / "samples" / f"{sample_index[i]:04d}.png"
            save_png(images[i], f)
            files.append(str(f))
    elif layout == "vbench":
        for i, p in enumerate(prompts):
            name = f"{p}-{sample_index[i]}.mp4"
            if "/" in p or "\0" in p or len(name.encode()) > 255:
                raise ValueError(f"VBench file names hold the prompt, which must not contain '/' and must fit a "
                                 f"255-byte file name: {p!r}")
            f = out / name
            save_video(images[i], f, fps=float((extra or [{}] * len(prompts))[i].get("fps", 8.0)))
            files.append(str(f))
    else:
        for i, p in enumerate(prompts):
            if "/" in p:
                raise ValueError(f"T2I-CompBench file names hold the prompt, which cannot contain '/': {p!r}")
            f = out / "samples" / f"{p}_{sample_index[i]:06d}.png"
            save_png(images[i], f)
            files.append(str(f))
    return files
