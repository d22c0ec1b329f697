"""Progress bars (tqdm, on stderr) for the long-running commands, and the ``--quiet`` switch that turns them off.

Every command that runs a model for more than a moment (``sample``, ``eval``, ``score``, ``noise-opt``, ``demo``,
``train``, ``eval-rewards``) draws its bars through :func:`progress`; ``--quiet`` (or ``REWARDFLOW_QUIET=1`` in
the environment) hides them together with the libraries' own loading bars (diffusers, transformers, datasets).
Results (tables, "wrote ..." lines) are printed on stdout either way. No torch import here: the parser uses it.
"""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm

_QUIET = False


def set_quiet(quiet: bool = True) -> None:
    """Hide (``True``) or show the progress bars of this process, and the libraries' loading bars."""
    global _QUIET
    _QUIET = bool(quiet)
    if _QUIET:
        quiet_library_bars()


def is_quiet() -> bool:
    return _QUIET or os.environ.get("REWARDFLOW_QUIET", "").strip().lower() in ("1", "true", "yes")


def quiet_library_bars() -> None:
    """Turn off the loading bars of the Hugging Face libraries (hub downloads, datasets, transformers through the
    environment, read when they are imported; diffusers through its switch)."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    for mod in ("transformers.utils.logging", "datasets"):
        m = sys.modules.get(mod)  # already imported: the environment was read; use the switch
        if m is not None:
            (getattr(m, "disable_progress_bar", None) or getattr(m, "disable_progress_bars"))()
    try:
        from diffusers.utils import logging as dlog  # lazy: diffusers is heavy; its bar switch is not an env var
    except ImportError:
        return
    dlog.disable_progress_bar()


def progress(iterable=None, *, total: int | None = None, desc: str | None = None, unit: str = "it",
             disable: bool = False, **kwargs) -> tqdm:
    """A tqdm bar on stderr, off under ``--quiet`` (or when ``disable``, e.g. on every process but the first)."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable or is_quiet(), file=sys.stderr,
                dynamic_ncols=True, **kwargs)


def add_quiet_flag(parser) -> None:
    """``--quiet`` / ``-q`` on a command's parser (the CLI calls :func:`set_quiet` when it is given)."""
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bars (results are still printed); also REWARDFLOW_QUIET=1")
