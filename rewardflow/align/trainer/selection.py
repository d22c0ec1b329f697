"""Model selection and early stopping on one evaluation key (trainer keys ``best_metric``, ``best_mode``,
``early_stop_patience``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class BestTracker:
    """Model selection and early stopping on one evaluation key (``best_metric``): ``update(ev)`` returns whether
    this evaluation is a new best (strictly better; the first finite value counts). ``bad`` counts the evaluations
    since the best; ``should_stop`` once it reaches ``patience`` (0 = never). A resumed run rebuilds the tracker from
    the kept ``eval.jsonl`` records (:meth:`replay`), so the continuation selects and stops as the uninterrupted one."""

    def __init__(self, metric: str, mode: str = "max", patience: int = 0):
        self.metric, self.mode, self.patience = metric, mode, patience
        self.value: float | None = None
        self.step: int | None = None
        self.bad = 0

    def update(self, ev: dict) -> bool:
        if self.metric not in ev:
            raise KeyError(f"best_metric={self.metric!r} is not an evaluation key; this run's evaluation reports: "
                           f"{', '.join(k for k in ev if k not in ('step', 'samples'))}")
        v = ev[self.metric]
        if not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            self.bad += 1  # a non-finite evaluation never becomes the best
            return False
        v = float(v)
        better = self.value is None or (v > self.value if self.mode == "max" else v < self.value)
        if better:
            self.value, self.step, self.bad = v, int(ev["step"]), 0
        else:
            self.bad += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad >= self.patience

    def replay(self, eval_file: Path) -> None:
        if eval_file.is_file():
            for ln in eval_file.read_text().splitlines():
                if ln.strip():
                    rec = json.loads(ln)
                    if self.metric in rec:
                        self.update(rec)

    def summary(self) -> dict[str, Any]:
        return {"metric": self.metric, "mode": self.mode, "value": self.value, "step": self.step}
