"""A graceful stop for ``rewardflow train``: SIGTERM (what schedulers send before preemption) or SIGINT (Ctrl-C)
lets the current optimizer step finish, a checkpoint be written, and the run exit with one line saying how to
resume; the same signal a second time exits at once (docs/usage/robustness.md#signals)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
    """The run stopped on a signal after writing the checkpoint of its last finished step. ``exit_code`` is the
    shell's 128 + signal number (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, signum: int, step: int, checkpoint: Path):
        self.signum, self.step, self.checkpoint = int(signum), int(step), checkpoint
        self.exit_code = 128 + self.signum
        super().__init__(f"stopped by {signal.Signals(self.signum).name} after step {step}; checkpoint {checkpoint} "
                         "written. Rerun the same command to continue from it (resume=auto)")


class GracefulStop:
    """Context manager for the training loop. The first SIGINT / SIGTERM only records itself in :attr:`signum`
    (the loop checks it between steps); the same signal again restores the default action and re-sends it, which
    ends the process at once without a checkpoint. A different signal while stopping (torchrun's agent sends
    SIGTERM to workers that already got the terminal's SIGINT) is ignored. Outside the main thread (a notebook
    runner thread) nothing is installed."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.signum is None:
            self.signum = signum
            print(f"\n[rewardflow] {name}: finishing the current step, then writing a checkpoint (send {name} again "
                  "to stop at once, without one)", file=sys.stderr, flush=True)
        elif signum == self.signum:
            print(f"[rewardflow] {name} again: stopping now, without a checkpoint", file=sys.stderr, flush=True)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
