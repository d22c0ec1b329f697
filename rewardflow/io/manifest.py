"""The media manifest: one JSON file that lists generated images (or videos) with their prompts.

``rewardflow sample``, ``rewardflow eval`` (``OUT/images/``), ``rewardflow noise-opt`` (``OUT/final/``,
``OUT/initial/``) and the trainer's evaluation grids (``RUN/samples/``) write one; ``rewardflow score --prompts``,
every prompt-file reader (``eval --prompts``, ``sample --prompts``, trainer ``prompts``) and ``rewardflow report``
read it. Format (``manifest.json``)::

    {"format": "rewardflow-media/1",
     "media": "image" | "video",
     ...                                   # what made the files: model, adapter, lora, steps, seed, ...
     "images": [{"file": "00000_00.png",   # path relative to the manifest's folder (POSIX separators)
                 "prompt": "a red circle",
                 "prompt_index": 0, "sample_index": 0, "seed": 0, ...}]}

A row describes one file. A sample *grid* (several media in one PNG, the trainer's evaluation grids) has
``"prompts": [...]`` (row-major, ``"nrow"`` per grid row) instead of ``"prompt"``. Extra keys are kept.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

MANIFEST = "manifest.json"
FORMAT = "rewardflow-media/1"


def is_manifest(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a ``.json`` file holding a media manifest (a JSON object with an ``images`` list)."""
    path = Path(path)
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except ValueError:
        return False
    return isinstance(doc, dict) and isinstance(doc.get("images"), list)


def write_manifest(folder: str | os.PathLike, rows: Sequence[dict], media: str = "image",
                   info: dict | None = None) -> dict:
    """Write ``folder/manifest.json`` holding ``info`` and ``rows`` (each with ``file`` relative to ``folder`` and
    ``prompt`` or ``prompts``). Returns the document."""
    folder = Path(folder)
    for i, r in enumerate(rows):
        if "file" not in r or ("prompt" not in r and "prompts" not in r):
            raise ValueError(f"manifest row {i} needs 'file' and 'prompt' (or 'prompts' for a grid): {r}")
    doc: dict[str, Any] = {"format": FORMAT, "media": media, **dict(info or {})}
    doc["images"] = [dict(r, file=Path(r["file"]).as_posix()) for r in rows]
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, folder / MANIFEST)
    return doc


def append_manifest_row(folder: str | os.PathLike, row: dict, media: str = "image", info: dict | None = None) -> dict:
    """Add ``row`` to ``folder/manifest.json`` (created if missing); a row for the same ``file`` is replaced."""
    path = Path(folder) / MANIFEST
    doc = read_manifest(path) if path.is_file() else {"images": []}
    rows = [r for r in doc["images"] if r["file"] != Path(row["file"]).as_posix()] + [row]
    keep = {k: v for k, v in doc.items() if k not in ("images", "format", "media")}
    return write_manifest(folder, rows, doc.get("media", media), {**keep, **dict(info or {})})


def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest document at ``path`` (a ``manifest.json`` file, or a folder holding one), checked: every row has
    a ``file`` and a ``prompt`` (or ``prompts``). Errors name the file and the row."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise ValueError(f"{path}: not a media manifest (expected a JSON object with an 'images' list, as "
                         f"`rewardflow sample` writes)")
    for i, r in enumerate(doc["images"]):
        if not isinstance(r, dict) or not isinstance(r.get("file"), str) or not (
                isinstance(r.get("prompt"), str) or isinstance(r.get("prompts"), list)):
            raise ValueError(f"{path}: images[{i}] needs a 'file' and a text 'prompt'; got {r!r}")
    return doc


def manifest_files(path: str | os.PathLike) -> list[tuple[Path, dict]]:
    """``(absolute file path, row)`` for every row of the manifest at ``path`` (files resolved against the
    manifest's folder)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    return [((folder / r["file"]).resolve(), r) for r in read_manifest(path)["images"]]


def manifest_prompts(path: str | os.PathLike) -> list[str]:
    """The distinct prompts of a manifest in prompt order (``prompt_index`` when present, else first appearance):
    the prompt list that generated it (``n_per_prompt`` samples each)."""
    rows = [r for r in read_manifest(path)["images"] if "prompt" in r]
    if not rows:
        raise ValueError(f"{path}: the manifest lists no single-prompt media")
    if all(isinstance(r.get("prompt_index"), int) for r in rows):
        by_index: dict[int, str] = {}
        for r in rows:
            by_index.setdefault(r["prompt_index"], r["prompt"])
        return [by_index[i] for i in sorted(by_index)]
    return list(dict.fromkeys(r["prompt"] for r in rows))
