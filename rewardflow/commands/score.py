"""``rewardflow score``: score image files with one reward or a weighted sum of rewards.

Decisions (documented in docs/usage/score.md):

* Images are read ``--batch-size`` files at a time, in sorted path order, as decoded (PIL, in their stored mode),
  and scored with :meth:`~rewardflow.rewards.base.Reward.score_files`: every reward applies its official
  preprocessing to the file's pixels (PIL where the official package uses PIL), so the scores equal the official
  package's; images are never resized here.
* ``--prompts FILE``: a media manifest (``manifest.json`` of ``rewardflow sample`` / ``eval`` / ``noise-opt``,
  :mod:`rewardflow.io.manifest`), a ``.csv`` (columns ``file,prompt``) or a ``.jsonl`` (``{"file": ..., "prompt":
  ...}``) maps files to prompts (``file`` relative to the prompts file's folder, the path as listed, or a unique
  file name); a ``.csv`` / ``.jsonl`` without ``file`` and any other file (one prompt per line, read as every prompt
  file is: :mod:`rewardflow.io.prompts`) are matched in order to the sorted image files. Without ``--prompt`` /
  ``--prompts``, a ``manifest.json`` in the ``--images`` folder is used.
* An unreadable image is reported on stderr, listed under ``skipped`` in JSON output, and the rest are scored.
* A score that is NaN (a black-box judge that could not score) is written as ``nan`` in CSV and ``null`` in JSON
  and left out of the summary statistics (the ``nan`` column counts them).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

from rewardflow.io.progress import add_quiet_flag
from rewardflow.commands._options import add_reward_weights_option, build_reward_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "score", help="score image files with rewards (CSV/JSON per image + a summary table)",
        description="Score PNG/JPEG/WebP images with one reward or a weighted sum, e.g. "
                    "`rewardflow score --reward hpsv2.1:5,imagereward:1 --images out/ --prompts prompts.txt "
                    "--out scores.csv`.")
    p.add_argument("--reward", required=True, metavar="NAME[:WEIGHT],...",
                   help="reward spec, e.g. toy_clip or hpsv2.1:5,imagereward:1 (see `rewardflow rewards`)")
    p.add_argument("--images", required=True, metavar="DIR|GLOB",
                   help="a directory (PNG/JPEG/WebP, not recursive) or a quoted glob such as 'out/**/*.png'")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--prompts", metavar="FILE",
                   help="a manifest.json (as `sample`, `eval`, `noise-opt` write), a .csv / .jsonl with file,prompt, "
                        "or one prompt per line matched to the sorted images (default: DIR/manifest.json of --images)")
    g.add_argument("--prompt", metavar="TEXT", help="the same prompt for every image")
    add_reward_weights_option(p)
    p.add_argument("--out", default=None, metavar="FILE", help="write per-image scores to FILE (.csv or .json)")
    p.add_argument("--batch-size", type=int, default=16, help="images per reward call (default 16)")
    p.add_argument("--device", default="cpu", help="torch device for the rewards (default cpu)")
    add_quiet_flag(p)
    p.set_defaults(fn=run_score)


# ----------------------------------------------------------------------------------------------- inputs
def _match_files(path: Path, rows: list[dict], files: list[Path]) -> list[str]:
    """The prompt of each image file from ``{"file", "prompt"}`` rows: ``file`` relative to the prompts file's
    folder (as a manifest writes it), the path as listed by ``--images``, or the bare file name when it is unique."""
    base = path.parent
    by_path = {(base / str(r["file"])).resolve(): str(r["prompt"]) for r in rows}
    by_str = {str(r["file"]): str(r["prompt"]) for r in rows}
    names: dict[str, list[str]] = {}
    for r in rows:
        names.setdefault(Path(str(r["file"])).name, []).append(str(r["prompt"]))
    prompts, missing = [], []
    for fp in files:
        p = by_path.get(fp.resolve(), by_str.get(str(fp)))
        if p is None and len(names.get(fp.name, ())) == 1:
            p = names[fp.name][0]
        if p is None:
            missing.append(fp.name)
        prompts.append(p or "")
    if missing:
        raise ValueError(f"{path} has no prompt for {len(missing)} image(s): "
                         f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} (of the {len(files)} "
                         f"--images; its 'file' entries are relative to {base}; point --images at the files it "
                         "lists)")
    return prompts


def read_prompts(path: str | Path, files: list[Path]) -> list[str]:
    """One prompt per image file: from a media manifest (``.json``, :mod:`rewardflow.io.manifest`), a ``.csv`` /
    ``.jsonl`` with ``file,prompt`` (or with ``prompt`` only: in order), or a prompt file (one per line, in order);
    see the module docstring."""
    from rewardflow.io.manifest import read_manifest
    from rewardflow.io.prompts import read_prompt_file, read_prompt_rows

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file not found: {path}")
    suffix = path.suffix.lower()
    ordered: list[str] | None = None
    if suffix == ".json":
        rows = [r for r in read_manifest(path)["images"] if "prompt" in r]
        return _match_files(path, rows, files)
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            cols = set(reader.fieldnames or ())
            if "prompt" not in cols:
                raise ValueError(f"{path}: a prompts CSV needs the header columns file,prompt (or prompt alone, "
                                 f"matched in order), got {reader.fieldnames}")
            rows = list(reader)
        if "file" in cols:
            return _match_files(path, rows, files)
        ordered = [r["prompt"] for r in rows]
    elif suffix == ".jsonl":
        rows = read_prompt_rows(path)
        with_file = [r for r in rows if "file" in r]
        if with_file and len(with_file) != len(rows):
            raise ValueError(f"{path}: {len(with_file)} of {len(rows)} lines have a 'file'; give every line a "
                             "'file' (matched by file) or none (matched in order)")
        if with_file:
            return _match_files(path, rows, files)
        ordered = [r["prompt"] for r in rows]
    else:
        ordered = read_prompt_file(path)
    if len(ordered) != len(files):
        raise ValueError(f"{path} has {len(ordered)} prompts (lines that are not blank or '#' comments) but "
                         f"{len(files)} images were found; give one prompt per image in sorted file order, or a "
                         "manifest.json, .csv or .jsonl with file,prompt")
    return ordered


# ----------------------------------------------------------------------------------------------- scoring
def _score_batch(reward, names: list[str], media, prompts) -> tuple[dict[str, list[float]], list[float]]:
    from rewardflow.rewards.combine import WeightedReward

    heads = reward.score_files(media, prompts)
    if isinstance(reward, WeightedReward):
        comps = {n: heads[f"{r.name}#{i}"] for i, (n, r) in enumerate(zip(names, reward.rewards))}
        total = heads["score"]
    else:
        comps = {names[0]: heads[reward.primary_head]}
        total = comps[names[0]]
    return {k: v.detach().cpu().tolist() for k, v in comps.items()}, total.detach().cpu().tolist()


def summarize(rows: list[dict], columns: list[str]) -> dict[str, dict]:
    """Per score column: count of finite values, mean, sample std, min, max over them, and the NaN count."""
    import torch

    out = {}
    for c in columns:
        v = torch.tensor([r[c] for r in rows], dtype=torch.float64)
        ok = v[torch.isfinite(v)]
        n = int(ok.numel())
        out[c] = {"n": n, "mean": float(ok.mean()) if n else math.nan,
                  "std": float(ok.std()) if n > 1 else math.nan,
                  "min": float(ok.min()) if n else math.nan, "max": float(ok.max()) if n else math.nan,
                  "nan": int(v.numel() - n)}
    return out


def format_summary(summary: dict[str, dict]) -> str:
    w = max([5] + [len(c) for c in summary])
    lines = [f"{'score':<{w}}  {'n':>5}  {'mean':>10}  {'std':>10}  {'min':>10}  {'max':>10}  {'nan':>4}"]
    for c, s in summary.items():
        lines.append(f"{c:<{w}}  {s['n']:>5}  {s['mean']:>10.4f}  {s['std']:>10.4f}  {s['min']:>10.4f}  "
                     f"{s['max']:>10.4f}  {s['nan']:>4}")
    return "\n".join(lines)


def _json_number(x: float):
    return x if math.isfinite(x) else None


def write_rows(path: Path, rows: list[dict], columns: list[str], summary: dict, skipped: list[dict],
               spec: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["file", "prompt", *columns])
            for r in rows:
                w.writerow([r["file"], r["prompt"], *(repr(float(r[c])) for c in columns)])
    else:
        doc = {"reward": spec, "columns": columns,
               "rows": [{"file": r["file"], "prompt": r["prompt"], **{c: _json_number(r[c]) for c in columns}}
                        for r in rows],
               "summary": {c: {k: _json_number(v) if isinstance(v, float) else v for k, v in s.items()}
                           for c, s in summary.items()},
               "skipped": skipped}
        path.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n", encoding="utf-8")


def run_score(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from rewardflow.io.images import ImageReadError, list_images, open_image
    from rewardflow.io.manifest import MANIFEST
    from rewardflow.io.progress import progress
    from rewardflow.rewards.combine import parse_reward_spec

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    out = Path(args.out) if args.out else None
    if out is not None and out.suffix.lower() not in (".csv", ".json"):
        raise ValueError(f"--out must end in .csv or .json, got {out}")
    items = parse_reward_spec(args.reward)
    names = [n for n, _ in items]
    files = list_images(args.images)
    if args.prompts is None and args.prompt is None:
        if not (Path(args.images).is_dir() and (Path(args.images) / MANIFEST).is_file()):
            raise ValueError(f"give --prompts FILE or --prompt TEXT ({args.images} holds no {MANIFEST} to take the "
                             "prompts from)")
        args.prompts = str(Path(args.images) / MANIFEST)
    prompts = read_prompts(args.prompts, files) if args.prompts else [args.prompt] * len(files)

    reward = build_reward_from_args(args.reward, args.weights)
    if reward.modality != "image":
        raise ValueError(f"rewardflow score scores images; {args.reward!r} is a {reward.modality} reward")
    reward = reward.to(args.device).eval()
    columns = [*names, "total"]

    rows: list[dict | None] = [None] * len(files)
    skipped: list[dict] = []
    bar = progress(total=len(files), unit="img", desc="scoring")
    for start in range(0, len(files), args.batch_size):
        ids, media = [], []
        for i in range(start, min(start + args.batch_size, len(files))):
            try:
                media.append(open_image(files[i]))
                ids.append(i)
            except (ImageReadError, OSError) as e:
                skipped.append({"file": str(files[i]), "error": str(e)})
                tqdm.write(f"rewardflow score: skipped {files[i]}: {e}", file=sys.stderr)
                bar.update(1)
        if ids:
            comps, total = _score_batch(reward, names, media, [prompts[i] for i in ids])
            for j, i in enumerate(ids):
                rows[i] = {"file": str(files[i]), "prompt": prompts[i],
                           **{n: comps[n][j] for n in names}, "total": total[j]}
            bar.update(len(ids))
    bar.close()

    scored = [r for r in rows if r is not None]
    if not scored:
        raise ValueError(f"none of the {len(files)} image file(s) could be read (see the messages above)")
    summary = summarize(scored, columns)
    print(format_summary(summary))
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s): {', '.join(Path(s['file']).name for s in skipped)}",
              file=sys.stderr)
    if out is not None:
        write_rows(out, scored, columns, summary, skipped, args.reward)
        print(f"wrote {len(scored)} rows to {out}")
    return 0
