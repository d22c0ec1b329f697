"""Readers for local copies of the reward-model benchmarks (docs/rewards.md#accuracy).

Every reader returns a :class:`Benchmark`: a list of :class:`PairItem` (two media + human labels) or
:class:`RankItem` (k media + human ranks), with media given as file paths (resolved against the dataset folder) or
encoded bytes (parquet copies from the Hub store images as ``{"bytes", "path"}`` structs). Files: ``.json`` (a list
of objects), ``.jsonl``, ``.csv`` (standard library) and ``.parquet`` (only when ``pyarrow`` is installed). A
directory is read file by file; a file's stem that names a split (``validation_unique``, ``test_unique``...) or an
MJ-Bench config (``alignment``, ``safety``, ``quality``, ``bias``...) becomes the items' split / category.

Formats (official column names):

* ``pickapic`` — ``yuvalkirstain/pickapic_v1|v2``: ``caption``, ``jpg_0``, ``jpg_1``, ``label_0`` in {0, 0.5, 1};
  splits ``validation_unique`` (tie threshold) and ``test_unique`` (reported). Read by
  :class:`rewardflow.io.preferences.PreferenceDataset` (Hugging Face ``datasets``), the reader offline DPO trains
  from: the parquet shards as published (images as bytes), the jsonl sample, or ``prompt``/``chosen``/``rejected``.
* ``hpdv2`` — ``zhwang/HPDv2`` ``test.json``: ``prompt``, ``image_path`` (list), ``rank`` (list, 1 = best).
* ``imagerewarddb`` — ``THUDM/ImageReward`` ``data/test.json``: ``prompt``, ``generations`` (list), ``ranking``
  (list, 1 = best); or ``THUDM/ImageRewardDB`` per-image rows (``prompt_id``, ``prompt``, ``image``/``image_path``,
  ``rank``, ``classification``) grouped by ``prompt_id``.
* ``videogen-rewardbench`` — ``KwaiVGI/VideoGen-RewardBench`` csv: ``prompt``, ``path_A``, ``path_B``,
  ``A_model``, ``B_model``, labels ``VQ``, ``MQ``, ``TA``, ``Overall`` in {A, B, same}.
* ``mjbench`` — ``MJ-Bench/MJ-Bench``: ``caption``, ``image0``, ``image1``, ``label`` (0: image0 preferred, 1:
  image1, 0.5 or "tie": tie) or ``label0``/``label1``; optional ``category``, ``subcategory``.
* ``mjbench-video`` — ``MJ-Bench/MJ-BENCH-VIDEO`` ``test.json``: ``caption``, ``video_0_path``, ``video_1_path``,
  ``overall_preference`` and ``category_preference`` ("Video 0 better", "Video 1 better", "Same"), ``discard``.
* ``genai-bench`` — ``TIGER-Lab/GenAI-Bench`` (``image_generation``, ``video_generation``): ``prompt``,
  ``left_image``/``right_image`` (or ``left_video``/``right_video``), ``left_model``, ``right_model``,
  ``vote_type`` in {leftvote, rightvote, tievote, bothbad_vote}.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rewardflow.eval import accuracy as acc
from rewardflow.io.preferences import PreferenceDataset

FORMATS = ("pickapic", "hpdv2", "imagerewarddb", "videogen-rewardbench", "mjbench", "mjbench-video", "genai-bench")
TABLE_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")
MJBENCH_CONFIGS = ("alignment", "safety", "quality", "bias", "composition", "visualization")

Media = Any  # a str path, or bytes


@dataclass
class PairItem:
    prompt: str
    a: Media
    b: Media
    labels: dict[str, Any]          # aspect -> +1 / -1 / 0 (GenAI-Bench: "vote" -> a 4-way class name)
    category: str | None = None
    split: str | None = None


@dataclass
class RankItem:
    prompt: str
    media: list[Media]
    ranks: list[float]              # lower = better
    category: str | None = None


@dataclass
class Benchmark:
    format: str
    modality: str                   # image | video
    items: list
    source: str
    aspects: tuple[str, ...] = ("overall",)
    notes: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return "ranking" if self.items and isinstance(self.items[0], RankItem) else "pairs"


# ------------------------------------------------------------------------------------------------ tables
def _read_parquet(path: Path) -> list[dict]:
    try:
        import pyarrow.parquet as pq  # lazy: optional dependency, only for .parquet files
    except ImportError:
        raise ValueError(f"{path} is a parquet file, which needs `pyarrow` (pip install pyarrow); or convert it to "
                         "JSON/JSONL/CSV with any tool that reads parquet") from None
    return pq.read_table(path).to_pylist()


def read_table(path: str | Path) -> list[dict]:
    """Rows of a ``.json`` (list, or ``{"data": [...]}``), ``.jsonl``, ``.csv`` or ``.parquet`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file not found: {path}")
    suf = path.suffix.lower()
    if suf == ".parquet":
        return _read_parquet(path)
    if suf == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    text = path.read_text(encoding="utf-8")
    if suf == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as e:
                    raise ValueError(f"{path}:{n}: not JSON: {e}") from None
        return rows
    if suf == ".json":
        data = json.loads(text)
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of objects")
        return data
    raise ValueError(f"{path}: unsupported file type {suf!r}; use one of {', '.join(TABLE_SUFFIXES)}")


def _table_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"benchmark dataset not found: {path} (give a file or a folder of "
                                f"{'/'.join(TABLE_SUFFIXES)} files)")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TABLE_SUFFIXES
                   and not p.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"no {'/'.join(TABLE_SUFFIXES)} files in {path}")
    return files


def _need(row: dict, keys: Sequence[str], where: str, fmt: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise ValueError(f"{where}: a {fmt} row needs the column(s) {', '.join(missing)}; found "
                         f"{', '.join(map(str, row))}. Is --format right?")


def _first(row: dict, names: Sequence[str]):
    for n in names:
        if n in row and row[n] not in (None, ""):
            return n
    return None


class _Resolver:
    """Media cell -> path or bytes. Relative paths are tried against the table's folder and ``extra`` folders."""

    def __init__(self, base: Path, extra: Sequence[str] = ()):
        self.roots = [base, *[base / e for e in extra]]

    def __call__(self, cell, where: str):
        if isinstance(cell, dict):  # Hugging Face Image/Video feature: {"bytes": ..., "path": ...}
            if cell.get("bytes"):
                return bytes(cell["bytes"])
            cell = cell.get("path")
        if isinstance(cell, (bytes, bytearray)):
            return bytes(cell)
        if not isinstance(cell, str) or not cell:
            raise ValueError(f"{where}: empty media cell")
        p = Path(cell)
        if p.is_absolute():
            cands = [p]
        else:
            cands = [r / p for r in self.roots]
        for c in cands:
            if c.is_file():
                return str(c)
        raise FileNotFoundError(f"{where}: media file {cell!r} not found (looked in "
                                f"{', '.join(str(c.parent) for c in cands)}); download the media next to the table")


# ------------------------------------------------------------------------------------------------ readers
def _pair_label(value, mapping: dict, where: str) -> int:
    key = value.strip() if isinstance(value, str) else value
    if isinstance(key, str):
        key_l = key.lower()
        for k, v in mapping.items():
            if isinstance(k, str) and k.lower() == key_l:
                return v
        try:
            key = float(key)
        except ValueError:
            pass
    if key in mapping:
        return mapping[key]
    raise ValueError(f"{where}: unknown label {value!r}; expected one of {list(mapping)}")


def read_pickapic(path: Path) -> Benchmark:
    """Pick-a-Pic (or chosen/rejected pairs) through :class:`rewardflow.io.preferences.PreferenceDataset`, the
    reader offline DPO trains from: parquet shards as published, the shipped jsonl sample, csv / json tables."""
    data = PreferenceDataset(path)
    items = []
    for i in range(len(data)):
        r = data[i]
        items.append(PairItem(r.prompt, r.a, r.b, {"overall": r.label}, r.category, r.split))
    return Benchmark("pickapic", "image", items, str(path))


def read_hpdv2(path: Path) -> Benchmark:
    items = []
    for f in _table_files(path):
        res = _Resolver(f.parent, ("test", "images"))
        for i, row in enumerate(read_table(f)):
            where = f"{f}:{i}"
            _need(row, ("prompt", "image_path", "rank"), where, "hpdv2")
            paths, ranks = _as_list(row["image_path"]), [float(r) for r in _as_list(row["rank"])]
            if len(paths) != len(ranks):
                raise ValueError(f"{where}: {len(paths)} images but {len(ranks)} ranks")
            items.append(RankItem(str(row["prompt"]), [res(p, where) for p in paths], ranks,
                                  row.get("category") or None))
    return Benchmark("hpdv2", "image", items, str(path))


def _as_list(v):
    if isinstance(v, str):  # a CSV cell holding a JSON list
        try:
            v = json.loads(v)
        except ValueError:
            raise ValueError(f"expected a list, got {v[:50]!r}") from None
    return list(v)


def read_imagerewarddb(path: Path) -> Benchmark:
    items = []
    for f in _table_files(path):
        res = _Resolver(f.parent, ("images",))
        rows = read_table(f)
        if rows and "generations" in rows[0]:  # grouped test.json of THUDM/ImageReward
            for i, row in enumerate(rows):
                where = f"{f}:{i}"
                _need(row, ("prompt", "generations", "ranking"), where, "imagerewarddb")
                gens, ranks = _as_list(row["generations"]), [float(r) for r in _as_list(row["ranking"])]
                if len(gens) != len(ranks):
                    raise ValueError(f"{where}: {len(gens)} generations but {len(ranks)} ranks")
                items.append(RankItem(str(row["prompt"]), [res(g, where) for g in gens], ranks,
                                      row.get("classification") or row.get("category") or None))
            continue
        groups: dict[str, RankItem] = {}
        for i, row in enumerate(rows):  # per-image rows of THUDM/ImageRewardDB
            where = f"{f}:{i}"
            _need(row, ("prompt_id", "prompt", "rank"), where, "imagerewarddb")
            col = _first(row, ("image", "image_path"))
            if col is None:
                raise ValueError(f"{where}: an ImageRewardDB row needs an `image` or `image_path` column")
            g = groups.setdefault(str(row["prompt_id"]), RankItem(str(row["prompt"]), [], [],
                                                                  row.get("classification") or None))
            g.media.append(res(row[col], where))
            g.ranks.append(float(row["rank"]))
        items += list(groups.values())
    return Benchmark("imagerewarddb", "image", items, str(path))


VIDEOGEN_ASPECTS = ("Overall", "VQ", "MQ", "TA")


def read_videogen_rewardbench(path: Path) -> Benchmark:
    items = []
    for f in _table_files(path):
        res = _Resolver(f.parent, ("videos",))
        for i, row in enumerate(read_table(f)):
            where = f"{f}:{i}"
            _need(row, ("prompt", "path_A", "path_B"), where, "videogen-rewardbench")
            labels = {}
            for asp in VIDEOGEN_ASPECTS:
                col = asp if asp in row else ("ALL" if asp == "Overall" and "ALL" in row else None)
                if col is not None and row[col] not in (None, ""):
                    # eval_videogen_rewardbench.py: {'A': 1, 'B': -1, 'same': 0}
                    labels[asp] = _pair_label(row[col], {"A": 1, "B": -1, "same": 0}, f"{where} {col}")
            if "Overall" not in labels:
                raise ValueError(f"{where}: a videogen-rewardbench row needs an `Overall` label column (A/B/same)")
            cat = f"{row['A_model']} vs {row['B_model']}" if row.get("A_model") and row.get("B_model") else None
            items.append(PairItem(str(row["prompt"]), res(row["path_A"], where), res(row["path_B"], where), labels,
                                  cat))
    return Benchmark("videogen-rewardbench", "video", items, str(path), aspects=VIDEOGEN_ASPECTS)


def read_mjbench(path: Path) -> Benchmark:
    items = []
    for f in _table_files(path):
        res = _Resolver(f.parent, ("images",))
        cfg = next((c for c in MJBENCH_CONFIGS if f.stem.lower().startswith(c)), None)
        for i, row in enumerate(read_table(f)):
            where = f"{f}:{i}"
            _need(row, ("caption", "image0", "image1"), where, "mjbench")
            if "label" in row and row["label"] not in (None, ""):
                h = _pair_label(row["label"], {0.0: 1, 1.0: -1, 0.5: 0, "tie": 0}, where)
            elif "label0" in row and "label1" in row:
                l0, l1 = float(row["label0"]), float(row["label1"])
                h = 1 if l0 > l1 else -1 if l1 > l0 else 0
            else:
                raise ValueError(f"{where}: an mjbench row needs `label` (0/1/0.5) or `label0` and `label1`")
            cat = row.get("category") or cfg
            if cat and row.get("subcategory"):
                cat = f"{cat}/{row['subcategory']}"
            items.append(PairItem(str(row["caption"]), res(row["image0"], where), res(row["image1"], where),
                                  {"overall": h}, cat or None))
    return Benchmark("mjbench", "image", items, str(path))


_MJV = {"video 0 better": 1, "video 1 better": -1, "same": 0, "hard to judge": 0}
MJV_ASPECTS = ("overall", "Alignment", "Safety", "Fineness", "Coherence & Consistency", "Bias")


def read_mjbench_video(path: Path) -> Benchmark:
    items, dropped = [], 0
    for f in _table_files(path):
        res = _Resolver(f.parent, ("videos",))
        for i, row in enumerate(read_table(f)):
            where = f"{f}:{i}"
            _need(row, ("caption", "video_0_path", "video_1_path", "overall_preference"), where, "mjbench-video")
            if row.get("discard") in (True, "true", "True"):
                dropped += 1
                continue
            labels = {"overall": _pair_label(row["overall_preference"], _MJV, where)}
            for asp, v in (row.get("category_preference") or {}).items():
                labels[asp] = _pair_label(v, _MJV, f"{where} {asp}")
            items.append(PairItem(str(row["caption"]), res(row["video_0_path"], where),
                                  res(row["video_1_path"], where), labels, row.get("category") or None))
    b = Benchmark("mjbench-video", "video", items, str(path), aspects=MJV_ASPECTS)
    if dropped:
        b.notes.append(f"{dropped} item(s) marked discard=true were skipped")
    return b


def read_genai_bench(path: Path) -> Benchmark:
    items, modality = [], None
    for f in _table_files(path):
        res = _Resolver(f.parent, ("images", "videos"))
        for i, row in enumerate(read_table(f)):
            where = f"{f}:{i}"
            _need(row, ("vote_type",), where, "genai-bench")
            left = _first(row, ("left_image", "left_output_image", "left_video"))
            right = _first(row, ("right_image", "right_output_image", "right_video"))
            prompt = _first(row, ("prompt", "instruct_prompt", "target_prompt"))
            if left is None or right is None or prompt is None:
                raise ValueError(f"{where}: a genai-bench row needs prompt and left_image/right_image (or "
                                 f"left_video/right_video) columns; found {', '.join(row)}")
            m = "video" if left.endswith("video") else "image"
            if modality not in (None, m):
                raise ValueError(f"{path}: mixes image and video rows; evaluate one GenAI-Bench task at a time")
            modality = m
            vote = str(row["vote_type"]).strip()
            if vote not in acc.GENAI_VOTES:
                raise ValueError(f"{where}: unknown vote_type {vote!r}; expected one of {tuple(acc.GENAI_VOTES)}")
            cat = f"{row['left_model']} vs {row['right_model']}" if row.get("left_model") else None
            items.append(PairItem(str(row[prompt]), res(row[left], where), res(row[right], where),
                                  {"vote": acc.GENAI_VOTES[vote]}, cat))
    return Benchmark("genai-bench", modality or "image", items, str(path), aspects=("vote",))


READERS: dict[str, Callable[[Path], Benchmark]] = {
    "pickapic": read_pickapic, "hpdv2": read_hpdv2, "imagerewarddb": read_imagerewarddb,
    "videogen-rewardbench": read_videogen_rewardbench, "mjbench": read_mjbench,
    "mjbench-video": read_mjbench_video, "genai-bench": read_genai_bench,
}


def load_benchmark(path: str | Path, fmt: str) -> Benchmark:
    """Read a local benchmark copy in the given format (see the module docstring)."""
    if fmt not in READERS:
        raise ValueError(f"unknown benchmark format {fmt!r}; choose one of {', '.join(FORMATS)}")
    b = READERS[fmt](Path(path))
    if not b.items:
        raise ValueError(f"{path}: no {fmt} items found")
    return b
