"""Argument types and checks shared by the commands: numbers that are meaningless at 0, negative, NaN or inf are
refused while the command line is parsed (argparse then names the flag), and ``--device`` is checked against the
devices this machine has before anything loads."""

from __future__ import annotations

import argparse
import math
import re


def _number(text: str, kind: type, what: str, ok) -> int | float:
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r} (not a finite number)")
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (counts: steps, iterations, batch sizes, candidates)."""
    return _number(text, int, "an integer >= 1", lambda v: v >= 1)


def nonneg_int(text: str) -> int:
    """An integer >= 0 (0 means "none" / "off", as the flag's help says)."""
    return _number(text, int, "an integer >= 0", lambda v: v >= 0)


def positive_float(text: str) -> float:
    """A finite number > 0 (learning rates, scales, timeouts)."""
    return _number(text, float, "a finite number > 0", lambda v: v > 0)


def nonneg_float(text: str) -> float:
    """A finite number >= 0 (weights, regularization strengths; 0 = off)."""
    return _number(text, float, "a finite number >= 0", lambda v: v >= 0)


def finite_float(text: str) -> float:
    """Any finite number (NaN and inf refused)."""
    return _number(text, float, "a finite number", lambda v: True)


def unit_float(text: str) -> float:
    """A number in [0, 1]."""
    return _number(text, float, "a number in [0, 1]", lambda v: 0 <= v <= 1)


_DEVICE = re.compile(r"^(cpu|cuda|mps|xpu|meta)(:\d+)?$")


def available_devices() -> list[str]:
    import torch

    out = ["cpu"]
    if torch.cuda.is_available():
        out += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out


def resolve_device(device: str | None, flag: str = "--device") -> str:
    """``device`` checked against this machine (None: cuda when a GPU is visible, else cpu). A bogus name or a
    device the machine does not have is a ``ValueError`` listing the available ones."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    have = available_devices()
    text = str(device).strip()
    if not _DEVICE.match(text) or text.startswith("meta"):
        raise ValueError(f"{flag} {device!r} is not a device; available here: {', '.join(have)}")
    if text not in have:
        kind = text.split(":")[0]
        why = {"cuda": "no CUDA GPU is visible to torch" if not torch.cuda.is_available() else
               f"this machine has {torch.cuda.device_count()} CUDA device(s)"}.get(kind, f"{kind} is not available")
        raise ValueError(f"{flag} {device}: {why}; available here: {', '.join(have)}")
    return text
