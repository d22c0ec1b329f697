"""Preference pairs from disk, through Hugging Face ``datasets``: the one reader of offline DPO
(``pairs=offline dataset=PATH``) and of ``rewardflow eval-rewards --format pickapic``.

Accepted layouts (columns; a row may use either form):

* **Pick-a-Pic** v1 / v2 as published (``yuvalkirstain/pickapic_v1`` / ``_v2``: parquet shards
  ``data/{train,validation,test,validation_unique,test_unique}-*.parquet``): ``caption``, ``jpg_0``, ``jpg_1`` (the
  encoded image bytes), ``label_0`` (1: image 0 preferred, 0: image 1 preferred, 0.5: tie). The shipped sample
  (``assets/eval_samples/pickapic/*.jsonl``) uses the same columns with image file paths. ``image_0`` / ``image_1``
  are accepted for ``jpg_0`` / ``jpg_1`` and ``prompt`` for ``caption``.
* **chosen / rejected**: ``prompt`` (or ``caption``), ``chosen``, ``rejected`` (the chosen one is preferred).

``PATH`` is a ``.parquet``, ``.jsonl``, ``.json`` or ``.csv`` file, a folder of them (read recursively; a file
whose name starts with a split name, ``validation_unique-00000-of-00001.parquet``, belongs to that split, others
to ``train``), or a folder written by ``Dataset.save_to_disk``. An image cell is encoded bytes, an HF ``Image``
struct (``{"bytes", "path"}``), or a file path, relative paths resolved against the dataset's folder (and each
table file's folder); offline DPO also takes a ``.safetensors`` file holding an encoded ``latent``.

:func:`check_preference_columns` reads only the schema (parquet footer, the first JSON line, the CSV header), so
a config names a missing column in milliseconds, before any model loads. The rows are read with
``datasets.load_dataset`` (memory-mapped Arrow, cached by ``datasets``): a full Pick-a-Pic copy is not held in
memory; cells are read when a pair is used.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rewardflow.io.progress import is_quiet, quiet_library_bars

TABLE_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}
SPLITS = ("validation_unique", "test_unique", "validation", "test", "train")  # longest prefix first
PROMPT_COLUMNS = ("caption", "prompt")
PAIR_FORMS = {"pickapic": ("jpg_0", "jpg_1", "label_0"), "pickapic (image_0/image_1)": ("image_0", "image_1", "label_0"),
              "chosen/rejected": ("chosen", "rejected")}
PICKAPIC_DOC = "caption, jpg_0, jpg_1, label_0 (Pick-a-Pic) or prompt, chosen, rejected"


@dataclass
class PreferencePair:
    """One row: ``a`` and ``b`` (a file path or encoded bytes), ``label`` +1 (``a`` preferred), -1 (``b``) or 0
    (tie), the split it came from and its ``category`` column if any."""

    prompt: str
    a: Any
    b: Any
    label: int
    split: str | None = None
    category: str | None = None


# ------------------------------------------------------------------------------------------------- files, schema
def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()
                              or (path / "state.json").is_file())


def preference_files(path: str | os.PathLike) -> list[Path]:
    """The table files of ``path`` (itself, or every table file under the folder, sorted). Errors name the path."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() not in TABLE_BUILDERS:
            raise ValueError(f"unsupported preference dataset {path}: use .parquet, .jsonl, .json or .csv (or a "
                             "folder of them, or a saved HF dataset folder)")
        return [path]
    if not path.exists():
        raise FileNotFoundError(f"preference dataset not found: {path}")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TABLE_BUILDERS
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise FileNotFoundError(f"no .parquet / .jsonl / .json / .csv files in {path}")
    suffixes = {TABLE_BUILDERS[p.suffix.lower()] for p in files}
    if len(suffixes) > 1:
        raise ValueError(f"{path} mixes table formats ({', '.join(sorted(suffixes))}); keep one format per folder")
    return files


def split_of(file: Path) -> str:
    """The split a table file belongs to, from its name (``test_unique-00000-of-00001.parquet`` -> test_unique)."""
    stem = file.name.lower()
    return next((s for s in SPLITS if stem.startswith(s)), "train")


def _columns(file: Path) -> list[str]:
    suffix = file.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq  # lazy: pyarrow (a datasets dependency) loads in ~0.3 s
        except ImportError:
            raise ValueError(f"{file} is a parquet file, which needs `pyarrow` (pip install pyarrow, or pip install "
                             "'rewardflow[data]' for datasets and pyarrow)") from None
        return list(pq.read_schema(file).names)
    if suffix == ".csv":
        with open(file, newline="", encoding="utf-8-sig") as f:
            return next(csv.reader(f), [])
    text = file.read_text(encoding="utf-8-sig")
    if suffix == ".json" and text.lstrip().startswith("["):
        rows = json.loads(text)
        return list(rows[0]) if rows and isinstance(rows[0], dict) else []
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    try:
        row = json.loads(line) if line else {}
    except ValueError as e:
        raise ValueError(f"{file}:1: not a JSON object ({e})") from None
    return list(row) if isinstance(row, dict) else []


def _saved_columns(path: Path) -> list[str]:
    import datasets  # lazy: a heavy import, only for saved HF dataset folders

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        return sorted({c for d in ds.values() for c in d.column_names})
    return list(ds.column_names)


def check_columns(columns: list[str], where: str) -> str:
    """The pair form ``columns`` hold (``pickapic`` / ``chosen/rejected``); a missing column is a ValueError naming
    it (and the columns found)."""
    cols = set(columns)
    if "jpg_0" not in cols and "image_0_url" in cols:
        raise ValueError(f"{where}: this is Pick-a-Pic's `_no_images` variant (image URLs, no jpg_0/jpg_1 columns); "
                         "download the full dataset, whose jpg_0/jpg_1 columns hold the images")
    if not cols & set(PROMPT_COLUMNS):
        raise ValueError(f"{where}: no prompt column: a preference dataset needs 'caption' (Pick-a-Pic) or 'prompt'; "
                         f"found {', '.join(columns) or 'no columns'}")
    for form, need in PAIR_FORMS.items():
        if set(need) <= cols:
            return form.split(" ")[0]
    # name what is missing for the form the columns come closest to
    form, need = max(PAIR_FORMS.items(), key=lambda kv: len(set(kv[1]) & cols))
    if not set(need) & cols:
        raise ValueError(f"{where}: no preference columns; expected {PICKAPIC_DOC}; found {', '.join(columns)}")
    missing = [c for c in need if c not in cols]
    raise ValueError(f"{where}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                     f"({form} pairs need {', '.join(need)}); found {', '.join(columns)}")


def check_preference_columns(path: str | os.PathLike) -> str:
    """Check the columns of every table file of ``path`` from its schema alone (no rows read). Returns the pair
    form; raises FileNotFoundError / ValueError naming the file and the missing column."""
    path = Path(path)
    if is_saved_dataset(path):
        return check_columns(_saved_columns(path), str(path))
    forms = {check_columns(_columns(f), str(f)) for f in preference_files(path)}
    return forms.pop() if len(forms) == 1 else "mixed"


# ------------------------------------------------------------------------------------------------- the dataset
def _label(value, where: str) -> int:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: label_0 must be 0, 0.5 or 1, got {value!r}") from None
    if v == 1.0:
        return 1
    if v == 0.0:
        return -1
    if v == 0.5:
        return 0
    raise ValueError(f"{where}: label_0 must be 0, 0.5 or 1 (image 0 preferred / tie / image 1), got {value!r}")


class PreferenceDataset:
    """The pairs of a preference dataset (see the module docstring), read lazily from a ``datasets`` table.

    ``splits``: keep only these splits (e.g. ``("train",)`` for training; default all). ``len(ds)`` rows;
    ``ds[i]`` is a :class:`PreferencePair` with media resolved (paths made absolute, existing; bytes as bytes);
    :meth:`labels` reads the label column alone."""

    def __init__(self, path: str | os.PathLike, splits: tuple[str, ...] | None = None):
        try:
            import datasets  # lazy: a heavy import (~1.5 s), only when preference data is read
        except ImportError:
            raise ValueError("reading preference pairs needs the Hugging Face `datasets` library: "
                             "pip install 'rewardflow[data]' (or pip install datasets)") from None
        if is_quiet():
            quiet_library_bars()
        self.path = Path(path)
        check_preference_columns(self.path)  # names a missing column before reading any row
        if is_saved_dataset(self.path):
            loaded = datasets.load_from_disk(str(self.path))
            parts = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
            roots = [self.path]
        else:
            files = preference_files(self.path)
            by_split: dict[str, list[str]] = {}
            for f in files:
                by_split.setdefault(split_of(f), []).append(str(f))
            builder = TABLE_BUILDERS[files[0].suffix.lower()]
            parts = dict(datasets.load_dataset(builder, data_files=by_split))
            roots = [self.path if self.path.is_dir() else self.path.parent,
                     *dict.fromkeys(f.parent for f in files)]
        if splits is not None:
            parts = {k: v for k, v in parts.items() if k in splits}
            if not parts:
                raise ValueError(f"{self.path}: no rows of split(s) {', '.join(splits)}")
        self.roots = list(dict.fromkeys(roots))
        self._parts = []
        for name, d in parts.items():
            for c, feat in d.features.items():  # HF Image features: keep the encoded bytes / path, decode on use
                if isinstance(feat, datasets.Image) and feat.decode:
                    d = d.cast_column(c, datasets.Image(decode=False))
            self._parts.append((name, d))
        self._offsets = []
        n = 0
        for _, d in self._parts:
            self._offsets.append(n)
            n += len(d)
        self._len = n

    def __len__(self) -> int:
        return self._len

    def _locate(self, i: int):
        if not 0 <= i < self._len:
            raise IndexError(i)
        k = max(j for j, o in enumerate(self._offsets) if o <= i)
        return self._parts[k], i - self._offsets[k]

    def labels(self) -> list[int]:
        """The label of every row (+1 / -1 / 0), read column-wise (no image cell is touched)."""
        out = []
        for name, d in self._parts:
            cols = set(d.column_names)
            if "label_0" in cols:
                lab = d["label_0"]
            else:
                lab = [None] * len(d)
            for j, v in enumerate(lab):
                if v is None:  # a chosen/rejected row
                    out.append(1)
                else:
                    out.append(_label(v, f"{self.path} ({name}) row {j}"))
        return out

    def __getitem__(self, i: int) -> PreferencePair:
        (name, d), j = self._locate(int(i))
        row = d[j]
        where = f"{self.path} ({name}) row {j}"
        prompt = next((row[c] for c in PROMPT_COLUMNS if row.get(c) is not None), None)
        if prompt is None:
            raise ValueError(f"{where}: no prompt ('caption' or 'prompt' is empty)")
        if row.get("chosen") is not None and row.get("rejected") is not None:
            a, b, label = row["chosen"], row["rejected"], 1
        else:
            a = row.get("jpg_0") if row.get("jpg_0") is not None else row.get("image_0")
            b = row.get("jpg_1") if row.get("jpg_1") is not None else row.get("image_1")
            if a is None or b is None or row.get("label_0") is None:
                raise ValueError(f"{where}: needs {PICKAPIC_DOC}; this row has "
                                 f"{', '.join(k for k, v in row.items() if v is not None)}")
            label = _label(row["label_0"], where)
        return PreferencePair(str(prompt), self.media(a, where), self.media(b, where), label, row.get("split") or name,
                              row.get("category") or None)

    def media(self, cell, where: str = ""):
        """A media cell -> encoded ``bytes`` or an existing file path (``str``)."""
        if isinstance(cell, dict):  # an HF Image struct
            if cell.get("bytes"):
                return bytes(cell["bytes"])
            cell = cell.get("path")
        if isinstance(cell, (bytes, bytearray, memoryview)):
            return bytes(cell)
        if not isinstance(cell, str) or not cell:
            raise ValueError(f"{where}: empty image cell")
        p = Path(cell)
        cands = [p] if p.is_absolute() else [r / p for r in self.roots]
        for c in cands:
            if c.is_file():
                return str(c)
        raise FileNotFoundError(f"{where}: image file {cell!r} not found (looked in "
                                f"{', '.join(str(c.parent) for c in cands)}); paths are relative to the dataset's "
                                "folder")

    def string_cells(self) -> list[tuple[int, str]]:
        """``(row, path)`` of every media cell stored as a path (to check that the files exist up front)."""
        out = []
        for (_, d), off in zip(self._parts, self._offsets):
            for c in ("jpg_0", "jpg_1", "image_0", "image_1", "chosen", "rejected"):
                if c in d.column_names and getattr(d.features[c], "dtype", None) in ("string", "large_string"):
                    out += [(off + j, v) for j, v in enumerate(d[c]) if isinstance(v, str) and v]
        return out
