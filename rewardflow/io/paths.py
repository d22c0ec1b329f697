"""Where shipped files live, how a relative input path written in a config file is resolved, and file modes that
follow the user's umask."""

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


def current_umask() -> int:
    """The process's umask (read from /proc where available; else set and restored)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def respect_umask(path: str | os.PathLike) -> None:
    """Give ``path`` (a file, or every file under a folder) the mode a plain ``open()`` would have created:
    ``0o666 & ~umask``. Some writers (safetensors' ``save_file``) create their files ``0600`` whatever the umask,
    so weights saved for others to read would not be readable."""
    path = Path(path)
    mode = 0o666 & ~current_umask()
    for f in ([path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]):
        if (f.stat().st_mode & 0o777) != mode:
            os.chmod(f, mode)
