"""``rewardflow eval-rewards``: accuracy of reward models against human preferences on a local benchmark copy,
with each benchmark's official accuracy definition (docs/rewards.md#accuracy, :mod:`rewardflow.eval.accuracy`), bootstrap
confidence intervals and a per-category breakdown. Prints a table; ``--out FILE.json`` writes everything."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from rewardflow.commands._args import nonneg_float, nonneg_int, positive_int, resolve_device

from rewardflow.io.progress import add_quiet_flag
from rewardflow.commands._options import add_reward_weights_option, build_reward_from_args, check_weights_names


def register(subparsers) -> None:
    # torch-free: building the parser must not load torch (rewardflow/runtime.py)
    from rewardflow.eval.benchmark_readers import FORMATS

    p = subparsers.add_parser(
        "eval-rewards", help="reward-model accuracy on a preference benchmark (Pick-a-Pic, HPD v2, ...)",
        description="e.g. `rewardflow eval-rewards --dataset data/pickapic --format pickapic --reward pickscore,"
                    "hpsv2.1 --out acc.json`")
    p.add_argument("--dataset", required=True, metavar="PATH",
                   help="a table file or a folder of them (+ media); pickapic: the parquet shards as published, the "
                        "jsonl sample, or chosen/rejected pairs")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--reward", required=True, action="append", metavar="NAMES",
                   help="comma-separated reward names, each evaluated on its own (a weighted spec such as "
                        "hpsv2.1:5,imagereward:1 is one combined reward); repeatable")
    add_reward_weights_option(p)
    p.add_argument("--out", default=None, metavar="FILE.json", help="write all metrics as JSON")
    p.add_argument("--bootstrap", type=nonneg_int, default=1000, metavar="N",
                   help="bootstrap resamples for the 95%% CI "
                   "(0 = no CI; default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--tie-threshold", type=nonneg_float, default=None,
                   help="pickapic: fixed tie threshold instead of tuning it on validation_unique")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--device", default="cpu")
    add_quiet_flag(p)
    p.set_defaults(fn=run)


def split_reward_specs(values: list[str]) -> list[str]:
    """``["a,b", "c:2,d:1"]`` -> ``["a", "b", "c:2,d:1"]`` (a spec with weights is one combined reward)."""
    out = []
    for v in values:
        out += [v] if ":" in v else [s.strip() for s in v.split(",") if s.strip()]
    if not out:
        raise ValueError("--reward is empty; give at least one reward name (see `rewardflow rewards`)")
    return out


def _fmt(m: dict) -> str:
    v, lo, hi = m["value"], m["ci_low"], m["ci_high"]
    if not math.isfinite(v):
        return "n/a"
    return f"{100 * v:6.2f}" + (f" [{100 * lo:.1f}, {100 * hi:.1f}]" if math.isfinite(lo) else "")


def format_table(results: dict[str, dict]) -> str:
    """One row per (reward, metric): value in % with its 95% CI."""
    rows = [(r, k, _fmt(m)) for r, res in results.items() for k, m in res["metrics"].items()]
    w1 = max([6] + [len(r) for r, _, _ in rows])
    w2 = max([6] + [len(k) for _, k, _ in rows])
    lines = [f"{'reward':<{w1}}  {'metric':<{w2}}  accuracy % [95% CI]"]
    lines += [f"{r:<{w1}}  {k:<{w2}}  {v}" for r, k, v in rows]
    for r, res in results.items():
        det = {k: v for k, v in res.get("details", {}).items() if isinstance(v, (int, float))}
        if det:
            lines.append(f"{r} details: " + ", ".join(f"{k}={v:.4g}" for k, v in det.items()))
        for k, cats in res.get("per_category", {}).items():
            lines.append(f"{r} {k} per category: " + ", ".join(f"{c}={100 * v:.1f}" if math.isfinite(v) else
                                                             f"{c}=n/a" for c, v in cats.items()))
    return "\n".join(lines)


def _json_safe(x):
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def run(args: argparse.Namespace) -> int:
    from rewardflow.eval.benchmarks import PRIMARY_METRIC, evaluate_benchmark, load_benchmark, score_benchmark

    if args.bootstrap < 0:
        raise ValueError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    args.device = resolve_device(args.device)
    out = Path(args.out) if args.out else None
    if out is not None and out.suffix.lower() != ".json":
        raise ValueError(f"--out must end in .json, got {out}")
    specs = split_reward_specs(args.reward)
    check_weights_names(args.weights, specs)
    bench = load_benchmark(args.dataset, args.format)
    print(f"{bench.format}: {len(bench.items)} {'prompts' if bench.kind == 'ranking' else 'pairs'} of "
          f"{bench.modality}s from {bench.source}")
    for n in bench.notes:
        print(f"note: {n}")
    results = {}
    for spec in specs:
        reward = build_reward_from_args(spec, args.weights, strict=False).to(args.device).eval()
        scores = score_benchmark(bench, reward, args.batch_size, args.device, progress=True)
        results[spec] = evaluate_benchmark(bench, scores, reward.primary_head, args.bootstrap, args.seed,
                                           args.tie_threshold)
    print(format_table(results))
    if out is not None:
        doc = {"dataset": str(args.dataset), "format": args.format, "bootstrap": args.bootstrap, "seed": args.seed,
               "primary_metric": PRIMARY_METRIC[args.format], "results": results}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(_json_safe(doc), indent=1, allow_nan=False) + "\n")
        print(f"wrote {out}")
    return 0
