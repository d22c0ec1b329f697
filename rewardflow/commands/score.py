"""``rewardflow score``: score image files with one reward or a weighted sum of rewards.

Decisions (documented in docs/usage/score.md):

* Images are read ``--batch-size`` files at a time, in sorted path order, as decoded (PIL, in their stored mode),
  and scored with :meth:`~rewardflow.rewards.base.Reward.score_files`: every reward applies its official
  preprocessing to the file's pixels (PIL where the official package uses PIL), so the scores equal the official
  package's; images are never resized here.
* ``--prompts FILE``: a ``.csv`` (columns ``file,prompt``) or ``.jsonl`` (``{"file": ..., "prompt": ...}``) maps
  files to prompts (``file`` is the file name or the path as listed); any other file is one prompt per line
  (blank lines ignored), matched in order to the sorted image files.
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
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--prompts", metavar="FILE",
                   help="one prompt per line matched to the sorted images, or a .csv / .jsonl with file,prompt")
    g.add_argument("--prompt", metavar="TEXT", help="the same prompt for every image")
    add_reward_weights_option(p)
    p.add_argument("--out", default=None, metavar="FILE", help="write per-image scores to FILE (.csv or .json)")
    p.add_argument("--batch-size", type=int, default=16, help="images per reward call (default 16)")
    p.add_argument("--device", default="cpu", help="torch device for the rewards (default cpu)")
    p.set_defaults(fn=run_score)


# ----------------------------------------------------------------------------------------------- inputs
def read_prompts(path: str | Path, files: list[Path]) -> list[str]:
    """One prompt per image file (see the module docstring for the accepted formats)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".jsonl"):
        mapping: dict[str, str] = {}
        with open(path, newline="", encoding="utf-8") as f:
            if suffix == ".csv":
                reader = csv.DictReader(f)
                if not reader.fieldnames or not {"file", "prompt"} <= set(reader.fieldnames):
                    raise ValueError(f"{path}: a prompts CSV needs the header columns file,prompt, got "
                                     f"{reader.fieldnames}")
                rows = list(reader)
            else:
                rows = []
                for n, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            rows.append(json.loads(line))
                        except ValueError as e:
                            raise ValueError(f"{path}:{n}: not a JSON object: {e}") from None
                        if not isinstance(rows[-1], dict) or not {"file", "prompt"} <= set(rows[-1]):
                            raise ValueError(f'{path}:{n}: expected {{"file": ..., "prompt": ...}}')
        for row in rows:
            mapping[str(row["file"])] = str(row["prompt"])
        prompts, missing = [], []
        for fp in files:
            key = next((k for k in (str(fp), fp.name) if k in mapping), None)
            if key is None:
                missing.append(fp.name)
            prompts.append(mapping.get(key, ""))
        if missing:
            raise ValueError(f"{path} has no prompt for {len(missing)} image(s): {', '.join(missing[:5])}"
                             f"{' ...' if len(missing) > 5 else ''}")
        return prompts
    lines = [ln.rstrip("\r\n") for ln in path.read_text(encoding="utf-8").splitlines()]
    lines = [ln for ln in lines if ln.strip()]
    if len(lines) != len(files):
        raise ValueError(f"{path} has {len(lines)} prompts (non-blank lines) but {len(files)} images were found; "
                         "give one prompt per image in sorted file order, or a .csv/.jsonl with file,prompt")
    return lines


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
    from rewardflow.rewards.combine import parse_reward_spec

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    out = Path(args.out) if args.out else None
    if out is not None and out.suffix.lower() not in (".csv", ".json"):
        raise ValueError(f"--out must end in .csv or .json, got {out}")
    items = parse_reward_spec(args.reward)
    names = [n for n, _ in items]
    files = list_images(args.images)
    prompts = read_prompts(args.prompts, files) if args.prompts else [args.prompt] * len(files)

    reward = build_reward_from_args(args.reward, args.weights)
    if reward.modality != "image":
        raise ValueError(f"rewardflow score scores images; {args.reward!r} is a {reward.modality} reward")
    reward = reward.to(args.device).eval()
    columns = [*names, "total"]

    rows: list[dict | None] = [None] * len(files)
    skipped: list[dict] = []
    bar = tqdm(total=len(files), unit="img", desc="scoring", file=sys.stderr)
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
