"""Reward-hacking monitor: watch held-out rewards that are *not* optimized (e.g. PickScore and the toy oracle while
HPSv2 is optimized) and flag divergence — the optimized reward still rising while a held-out one falls.

Rule (checked at every evaluation, :meth:`RewardHackingMonitor.update`):

* each reward's **noise threshold** ``tau`` is fixed at the first evaluation: the half-width of its bootstrap 95% CI
  when the evaluation reports one (``values[f"{name}_ci"] = (low, high)``, as ``rewardflow eval`` writes), else
  ``rel_tol * max(|first value|, abs_floor)`` (default 5% of the first value);
* a held-out reward ``h`` **diverges** at step ``t`` when it has fallen by more than ``tau_h`` from its best value
  so far (its peak, at step ``p``) while the optimized reward rose by more than ``tau_opt`` between ``p`` and ``t``;
* a warning is emitted after ``patience`` consecutive diverging evaluations, once per divergence episode (again
  only after the held-out reward has recovered to within ``tau_h`` of its peak).

Warnings are returned, printed with the prefix ``[rewardflow] reward-hacking warning`` (``verbose``) and appended
to ``log_file`` (JSON lines) when given, which ``rewardflow report`` shows.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

PREFIX = "[rewardflow] reward-hacking warning"


@dataclass
class _Track:
    tau: float | None = None
    peak: float = -math.inf
    peak_step: int | None = None
    streak: int = 0
    flagged: bool = False
    history: list[tuple[int, float]] = field(default_factory=list)


class RewardHackingMonitor:
    """``monitor.update(step, {name: value, ...}) -> list[str]`` warnings (see the module docstring).

    ``optimized``: the name of the optimized reward in the dicts (e.g. ``"eval_reward"``); ``held_out``: names of
    the watched rewards (higher = better for all). Unknown / missing / non-finite values are ignored for that step.
    """

    def __init__(self, optimized: str, held_out: Sequence[str], rel_tol: float = 0.05, abs_floor: float = 1e-3,
                 patience: int = 1, log_file: str | Path | None = None, verbose: bool = True):
        if not held_out:
            raise ValueError("RewardHackingMonitor needs at least one held-out reward name to watch")
        if optimized in held_out:
            raise ValueError(f"{optimized!r} is optimized; it cannot also be a held-out reward")
        if rel_tol < 0 or abs_floor < 0 or patience < 1:
            raise ValueError("rel_tol and abs_floor must be >= 0 and patience >= 1")
        self.optimized, self.held_out = optimized, list(held_out)
        self.rel_tol, self.abs_floor, self.patience = rel_tol, abs_floor, patience
        self.log_file = Path(log_file) if log_file is not None else None
        self.verbose = verbose
        self.tracks = {n: _Track() for n in [optimized, *self.held_out]}
        self.warnings: list[dict] = []

    # ------------------------------------------------------------------ helpers
    def _tau(self, name: str, value: float, values: Mapping) -> float:
        ci = values.get(f"{name}_ci")
        if ci is not None and len(ci) == 2 and all(math.isfinite(float(c)) for c in ci):
            return abs(float(ci[1]) - float(ci[0])) / 2
        return self.rel_tol * max(abs(value), self.abs_floor)

    def _value_at(self, name: str, step: int) -> float | None:
        for s, v in self.tracks[name].history:
            if s == step:
                return v
        return None

    # ------------------------------------------------------------------ API
    def update(self, step: int, values: Mapping[str, float]) -> list[str]:
        """Record one evaluation and return the warnings it raises (possibly none)."""
        for name, tr in self.tracks.items():
            v = values.get(name)
            if v is None or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
                continue
            v = float(v)
            if tr.tau is None:
                tr.tau = self._tau(name, v, values)
            tr.history.append((int(step), v))
        opt = self.tracks[self.optimized]
        if not opt.history or opt.history[-1][0] != int(step):
            self._update_peaks(step)
            return []
        out = []
        for name in self.held_out:
            tr = self.tracks[name]
            if not tr.history or tr.history[-1][0] != int(step):
                continue
            v = tr.history[-1][1]
            if tr.peak_step is None or v > tr.peak:
                tr.peak, tr.peak_step = v, int(step)
            drop = tr.peak - v
            opt_at_peak = self._value_at(self.optimized, tr.peak_step)
            gain = opt.history[-1][1] - opt_at_peak if opt_at_peak is not None else 0.0
            diverging = drop > tr.tau and gain > opt.tau
            if drop <= tr.tau:
                tr.flagged = False
            tr.streak = tr.streak + 1 if diverging else 0
            if diverging and tr.streak >= self.patience and not tr.flagged:
                tr.flagged = True
                msg = (f"{PREFIX} at step {step}: optimized {self.optimized} rose {gain:+.4g} since step "
                       f"{tr.peak_step} while held-out {name} fell {-drop:+.4g} from its peak {tr.peak:.4g} "
                       f"(noise thresholds: {name} {tr.tau:.3g}, {self.optimized} {opt.tau:.3g})")
                rec = {"step": int(step), "held_out": name, "optimized": self.optimized, "drop": drop,
                       "gain": gain, "peak_step": tr.peak_step, "tau_held_out": tr.tau, "tau_optimized": opt.tau,
                       "message": msg}
                self.warnings.append(rec)
                out.append(msg)
                if self.verbose:
                    print(msg, flush=True)
                if self.log_file is not None:
                    self.log_file.parent.mkdir(parents=True, exist_ok=True)
                    with open(self.log_file, "a") as f:
                        f.write(json.dumps(rec) + "\n")
        return out

    def replay(self, eval_file: str | Path) -> None:
        """Rebuild the state from the records of an ``eval.jsonl`` (a resumed run): peaks, streaks and flags as the
        uninterrupted run had them, without printing or logging the warnings again."""
        path = Path(eval_file)
        if not path.is_file():
            return
        log_file, verbose = self.log_file, self.verbose
        self.log_file, self.verbose = None, False
        try:
            for ln in path.read_text().splitlines():
                if ln.strip():
                    rec = json.loads(ln)
                    if isinstance(rec, dict) and "step" in rec:
                        self.update(int(rec["step"]), rec)
        finally:
            self.log_file, self.verbose = log_file, verbose

    def _update_peaks(self, step: int) -> None:
        for name in self.held_out:
            tr = self.tracks[name]
            if tr.history and tr.history[-1][0] == int(step) and tr.history[-1][1] > tr.peak:
                tr.peak, tr.peak_step = tr.history[-1][1], int(step)


def scan_records(records: Sequence[Mapping], optimized: str, held_out: Sequence[str], **kw) -> list[dict]:
    """Run a fresh monitor over evaluation records (e.g. ``eval.jsonl`` rows with a ``step`` key); returns the
    warning records. Used by ``rewardflow report`` for runs logged without a live monitor."""
    mon = RewardHackingMonitor(optimized, held_out, verbose=False, **kw)
    for r in records:
        mon.update(int(r.get("step", 0)), r)
    return mon.warnings
