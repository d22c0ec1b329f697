"""``rewardflow report RUN_DIR``: a static HTML report of a training run (see :mod:`rewardflow.eval.report`)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("report", help="one static HTML file for a run directory (curves, samples, config, "
                                             "eval tables, reward-hacking flags)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `rewardflow train`")
    p.add_argument("--out", default=None, metavar="FILE.html", help="default RUN_DIR/report.html")
    p.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    from rewardflow.eval.report import render_report

    out = render_report(args.run_dir, args.out)
    print(f"wrote {out}")
    return 0
