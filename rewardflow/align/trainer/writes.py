"""Writing run files safely: fsync, and a failed write (any exception: a full disk raises ``RuntimeError`` in
``torch.save`` and ``SafetensorError`` in safetensors, not only ``OSError``) turned into one
:class:`CheckpointWriteError` naming the path and the free space (docs/usage/robustness.md)."""

from __future__ import annotations

import errno as errno_mod
import os
import re
import shutil
from pathlib import Path


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb+") as fh:
                os.fsync(fh.fileno())
    fsync_dir(path)


class CheckpointWriteError(OSError):
    """A checkpoint (or ``final/``, ``best/``) could not be written: disk full, permissions, ... Any exception of the
    write counts (a full disk raises ``RuntimeError`` in ``torch.save`` and ``SafetensorError`` in safetensors, not
    only ``OSError``). The partial directory was removed and the earlier checkpoints are intact; ``errno`` is the
    underlying one when known (``errno.ENOSPC`` for a full disk)."""


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"


def free_space(path: Path) -> str:
    """``"12.0 MiB free of 1.0 GiB"`` on the filesystem holding ``path`` (its nearest existing parent)."""
    for p in (Path(path), *Path(path).parents):
        if p.exists():
            try:
                u = shutil.disk_usage(p)
            except OSError:
                break
            return f"{_size(u.free)} free of {_size(u.total)} on that filesystem"
    return "free space unknown"


def write_error(e: BaseException, what: str, path: Path, kept: str) -> CheckpointWriteError:
    """The :class:`CheckpointWriteError` for exception ``e`` raised while writing ``path`` (naming the free space
    and what was kept)."""
    code = e.errno if isinstance(e, OSError) and e.errno else None
    if code is None:  # safetensors: "I/O error: No space left on device (os error 28)"
        m = re.search(r"os error (\d+)", str(e))
        code = int(m.group(1)) if m else None
    reason = (e.strerror if isinstance(e, OSError) and e.strerror else
              f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else 'no message'}")
    if code is not None and not (isinstance(e, OSError) and e.strerror):
        reason += f" [{errno_mod.errorcode.get(code, code)}]"
    msg = (f"could not write {what}: writing {path} failed ({reason}); {free_space(path)}. {kept} Free disk space "
           "(or fix the permissions) and rerun the same command with resume=auto to continue from the latest one.")
    return CheckpointWriteError(code, msg) if code is not None else CheckpointWriteError(msg)
