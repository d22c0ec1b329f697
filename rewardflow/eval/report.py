"""``rewardflow report RUN_DIR``: one static, self-contained HTML file for a training run (no server; images are
embedded as base64 data URIs, so the file can be mailed or attached as is).

Reads the run-directory layout of :mod:`rewardflow.align.trainer`: ``config.yaml`` (resolved config),
``metrics.jsonl`` (training log), ``eval.jsonl`` (evaluations), ``samples/*.png`` (evaluation grids, named by step;
the first is "before", the last "after") with ``samples/manifest.json`` (each grid's prompts, row-major:
:mod:`rewardflow.io.manifest`), ``reward_curve.png``, ``summary.json``, and ``hacking.jsonl`` (warnings of
:class:`rewardflow.eval.monitor.RewardHackingMonitor`). Missing pieces are reported in their section, never fatal.
Reward hacking is watched only through held-out signals (``heldout_rewards``, the toy oracle): a run without any
says "not monitored", never "no divergence".

Sections (each a ``<section id=...>``): ``summary``, ``hacking``, ``reward-curves``, ``samples``, ``config``,
``eval-tables``.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Sequence

from rewardflow.eval.monitor import scan_records
from rewardflow.io.manifest import MANIFEST, read_manifest

SECTIONS = ("summary", "hacking", "reward-curves", "samples", "config", "eval-tables")
HELD_OUT_KEYS = ("oracle_accuracy", "oracle_partial")  # toy-world held-out signals; plus every heldout_* key

_CSS = """body{font-family:system-ui,sans-serif;margin:24px;max-width:1100px;color:#222;background:#fff}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:28px}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f0f0f0}pre{background:#f6f6f6;padding:10px;font-size:12px;overflow:auto}
.warn{background:#fff3cd;border:1px solid #e0b000;padding:8px;margin:4px 0}.ok{color:#1a7f37}
.na{background:#eef0f3;border:1px solid #9aa3ad;padding:8px;margin:4px 0;color:#333}
figcaption ol{font-size:11px;margin:4px 0 0 0;padding-left:22px;max-width:420px;columns:2}
.grid{display:flex;gap:16px;flex-wrap:wrap}.grid figure{margin:0}img{image-rendering:pixelated;max-width:100%}"""


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a torn last line of a run still being written
    return out


def _img(path: Path, alt: str, width: int | None = None) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    w = f' width="{width}"' if width else ""
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"{w}>'


def _num(v) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return html.escape(str(v))
    if isinstance(v, int):
        return str(v)
    return "nan" if not math.isfinite(v) else f"{v:.4g}"


def _table(rows: Sequence[dict], keys: Sequence[str] | None = None) -> str:
    if not rows:
        return "<p>(no rows)</p>"
    keys = list(keys) if keys else list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{_num(r.get(k, ''))}</td>" for k in keys) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def svg_curves(series: dict[str, list[tuple[float, float]]], width: int = 640, height: int = 260) -> str:
    """A small inline SVG line chart; each series is min-max normalised to the plot height (legend shows ranges)."""
    series = {k: v for k, v in series.items() if v}
    if not series:
        return "<p>(no curve data)</p>"
    colors = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
    xs = [x for v in series.values() for x, _ in v]
    x0, x1 = min(xs), max(xs)
    pad, parts, legend = 30, [], []
    for i, (name, pts) in enumerate(series.items()):
        ys = [y for _, y in pts]
        y0, y1 = min(ys), max(ys)
        sx = lambda x: pad + (x - x0) / ((x1 - x0) or 1) * (width - 2 * pad)  # noqa: E731
        sy = lambda y: height - pad - (y - y0) / ((y1 - y0) or 1) * (height - 2 * pad)  # noqa: E731
        c = colors[i % len(colors)]
        pts_s = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        parts.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="{pts_s}"/>')
        legend.append(f'<text x="{pad}" y="{14 + 14 * i}" font-size="11" fill="{c}">{html.escape(name)} '
                      f'[{y0:.4g} .. {y1:.4g}]</text>')
    axis = (f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#999"/>'
            f'<text x="{width / 2:.0f}" y="{height - 8}" font-size="11" text-anchor="middle">step '
            f'{x0:g} .. {x1:g}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'style="border:1px solid #ddd">{axis}{"".join(parts)}{"".join(legend)}</svg>')


def held_out_keys(evals: list[dict]) -> list[str]:
    """The held-out signals the evaluations recorded (toy oracle, every ``heldout_*`` reward)."""
    return [k for k in dict.fromkeys(k for r in evals for k in r)
            if k in HELD_OUT_KEYS or (k.startswith("heldout_") and not k.endswith("_ci"))]


def _grid_prompts(samples: Path) -> dict[str, list[str]]:
    """``samples/manifest.json``: grid file name -> its prompts (row-major); {} when absent or unreadable."""
    try:
        rows = read_manifest(samples / MANIFEST)["images"] if (samples / MANIFEST).is_file() else []
    except ValueError:
        return {}
    return {r["file"]: list(r.get("prompts") or [r.get("prompt", "")]) for r in rows}


def hacking_flags(run_dir: Path, evals: list[dict]) -> list[dict]:
    """Warnings logged live (``hacking.jsonl``) plus an offline scan of ``eval.jsonl``: optimized ``eval_reward``
    against the held-out toy oracle and every ``heldout_*`` reward (deduplicated by step and reward)."""
    flags = _read_jsonl(run_dir / "hacking.jsonl")
    held = held_out_keys(evals)
    if held and any("eval_reward" in r for r in evals):
        seen = {(f.get("step"), f.get("held_out")) for f in flags}
        for w in scan_records(evals, "eval_reward", held):
            if (w["step"], w["held_out"]) not in seen:
                flags.append(dict(w, source="offline scan of eval.jsonl"))
    return flags


def render_report(run_dir: str | Path, out: str | Path | None = None, max_metric_rows: int = 60) -> Path:
    """Write ``out`` (default ``RUN_DIR/report.html``) and return its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    markers = ("config.yaml", "metrics.jsonl", "eval.jsonl", "summary.json")
    if not any((run_dir / m).exists() for m in markers) and not (run_dir / "samples").is_dir():
        raise FileNotFoundError(f"{run_dir} does not look like a rewardflow run directory (none of "
                                f"{', '.join(markers)} or samples/ found)")
    out = Path(out) if out is not None else run_dir / "report.html"
    metrics, evals = _read_jsonl(run_dir / "metrics.jsonl"), _read_jsonl(run_dir / "eval.jsonl")
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    S: dict[str, str] = {}

    # summary
    items = {k: summary[k] for k in ("steps", "samples", "skipped_steps", "seconds") if k in summary}
    if evals:
        first, last = evals[0], evals[-1]
        keys = [k for k in last if isinstance(last[k], (int, float)) and (k in ("eval_reward", *HELD_OUT_KEYS)
                                                                       or k.startswith("heldout_"))]
        for k in keys[:6]:
            if k in first:
                items[f"{k} (first -> last eval)"] = f"{_num(first[k])} -> {_num(last[k])}"
    if items:
        items["reward-hacking watch"] = ", ".join(held_out_keys(evals)) or "not monitored (no held-out reward)"
    S["summary"] = _table([items]) if items else "<p>(no summary.json or eval.jsonl yet)</p>"

    # reward curves
    curve = run_dir / "reward_curve.png"
    svg = svg_curves({"train reward_mean": [(r["step"], r["reward_mean"]) for r in metrics if "reward_mean" in r],
                      **{f"eval {k}": [(r["step"], r[k]) for r in evals if isinstance(r.get(k), (int, float))]
                         for k in ("eval_reward", "oracle_accuracy") if any(k in r for r in evals)}})
    S["reward-curves"] = (_img(curve, "reward curve") if curve.is_file() else "") + svg

    # samples
    grids = sorted((run_dir / "samples").glob("*.png")) if (run_dir / "samples").is_dir() else []
    if grids:
        pick = [("before", grids[0]), ("after", grids[-1])] if len(grids) > 1 else [("only evaluation", grids[0])]
        captions = _grid_prompts(run_dir / "samples")

        def caption(p: Path) -> str:
            prompts = captions.get(p.name)
            if not prompts:
                return ""
            return ("<ol>" + "".join(f"<li>{html.escape(x)}</li>" for x in prompts) + "</ol>")

        S["samples"] = '<div class="grid">' + "".join(
            f"<figure>{_img(p, label, 420)}<figcaption>{label}: {html.escape(p.name)}"
            f"{' (prompts in grid order, left to right, top to bottom)' if captions.get(p.name) else ''}"
            f"{caption(p)}</figcaption></figure>"
            for label, p in pick) + "</div>" + (f"<p>{len(grids)} grids in samples/</p>" if len(grids) > 2 else "")
    else:
        S["samples"] = "<p>(no sample grids in samples/)</p>"

    # config
    cfg = run_dir / "config.yaml"
    S["config"] = (f"<pre>{html.escape(cfg.read_text())}</pre>" if cfg.is_file()
                   else "<p>(no config.yaml)</p>")

    # eval tables
    stride = max(1, math.ceil(len(metrics) / max_metric_rows))
    keys = [k for k in ("step", "loss", "reward_mean", "grad_norm", "lr", "skipped") if any(k in r for r in metrics)]
    S["eval-tables"] = ("<h3>Evaluations (eval.jsonl)</h3>" + _table(evals)
                        + f"<h3>Training log (metrics.jsonl, every {stride}. row)</h3>"
                        + _table(metrics[::stride], keys or None))

    # reward hacking
    flags = hacking_flags(run_dir, evals)
    held = held_out_keys(evals)
    if flags:
        S["hacking"] = "".join(f'<div class="warn">{html.escape(f["message"])}'
                               f'{" (" + html.escape(f["source"]) + ")" if f.get("source") else ""}</div>'
                               for f in flags)
    elif not held:
        S["hacking"] = ('<p class="na"><b>Not monitored.</b> ' + ("No evaluation ran" if not evals else
                        "No held-out reward ran at the evaluations") + ", so reward hacking (the optimized reward "
                        "rising while an independent one falls) could not be detected. Add "
                        "<code>heldout_rewards=NAME</code> (scored at every evaluation, never optimized) and "
                        "<code>eval_prompts</code> to watch for it.</p>")
    else:
        S["hacking"] = (f'<p class="ok">No divergence between the optimized reward and the held-out signals '
                        f'({html.escape(", ".join(held))}) was flagged.</p>')

    titles = {"summary": "Summary", "reward-curves": "Reward curves", "samples": "Samples before / after",
              "config": "Resolved config", "eval-tables": "Evaluation tables", "hacking": "Reward-hacking flags"}
    body = "".join(f'<section id="{k}"><h2>{titles[k]}</h2>{S[k]}</section>' for k in SECTIONS)
    doc = (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>rewardflow report: '
           f'{html.escape(run_dir.name)}</title><style>{_CSS}</style></head><body>'
           f'<h1>rewardflow run report: {html.escape(str(run_dir))}</h1>{body}</body></html>')
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(doc, encoding="utf-8")
    return out
