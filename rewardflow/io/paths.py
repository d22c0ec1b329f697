"""Where shipped files live, and how a relative input path written in a config file is resolved."""

from __future__ import annotations

import os
from pathlib import Path


def assets_root() -> Path:
    """The shipped ``assets/`` folder of the repository (override with ``REWARDFLOW_ASSETS``)."""
    env = os.environ.get("REWARDFLOW_ASSETS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "assets"


def resolve_input_path(value: str, base_dir: str | os.PathLike) -> str:
    """A relative input path written in a config file in ``base_dir``: the file next to the config if it exists,
    else the shipped asset for ``assets/...``, else ``value`` unchanged (relative to the working directory; also
    registered names such as ``toy`` or ``toy:train``, which are not paths)."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return str(p)
    beside = Path(base_dir) / p
    if beside.exists():
        return str(beside)
    if p.parts and p.parts[0] == "assets":
        shipped = assets_root().joinpath(*p.parts[1:])
        if shipped.exists():
            return str(shipped)
    return value
