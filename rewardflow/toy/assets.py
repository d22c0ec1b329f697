"""Where the shipped toy weights live: ``assets/toy/`` in the repository (override with ``REWARDFLOW_ASSETS``)."""

from __future__ import annotations

from pathlib import Path

from rewardflow.io.paths import assets_root


def asset_path(name: str) -> Path:
    """``generator``, ``reward`` or ``reward_adv`` -> the shipped directory (error names the fix if absent)."""
    p = assets_root() / "toy" / name
    if not p.exists():
        raise FileNotFoundError(
            f"shipped toy asset {name!r} not found at {p}. Install from a clone of the repository "
            f"(`pip install -e .`), set REWARDFLOW_ASSETS to the assets folder, or rebuild it with "
            f"`rewardflow toy train-generator` / `rewardflow toy train-reward`.")
    return p
