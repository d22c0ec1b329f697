"""Image files <-> tensors.

* :func:`load_image` reads PNG / JPEG / WebP into a ``[3, H, W]`` float32 tensor in [0, 1] (RGB). Palette, grey and
  CMYK images are converted with PIL's ``convert("RGB")``; an alpha channel is **dropped** (not composited), which
  is what the official reward packages do (``Image.open(p).convert("RGB")`` in ImageReward, HPSv2, PickScore's
  ``CLIPImageProcessor``), so a file scores the same here as with the official code. A corrupt or truncated file
  raises :class:`ImageReadError` naming the file.
* :func:`to_uint8` / :func:`to_pil` quantize a float image the way DDPO does before PIL
  (``(x * 255).round().clamp(0, 255)``, kvablack/ddpo-pytorch ``ddpo_pytorch/rewards.py``); every black-box reward
  (JPEG size, HTTP judges) uses them, so there is one quantization step in the code base.
* :func:`save_image` writes a tensor as PNG (lossless, so ``load_image(save_image(x))`` returns ``to_uint8(x) / 255``).
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np
import torch

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


class ImageReadError(ValueError):
    """An image file could not be decoded (corrupt, truncated, or not an image)."""


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file as ``[3, H, W]`` float32 RGB in [0, 1] (alpha dropped, see the module docstring)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()  # decode now: a truncated file fails here, not later inside a reward
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"cannot read image {path}: {type(e).__name__}: {e}") from e
    arr = np.asarray(rgb, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """Float ``[..., 3, H, W]`` in [0, 1] -> uint8 ``[..., H, W, 3]`` on the CPU (DDPO quantization)."""
    if not isinstance(image, torch.Tensor) or not image.is_floating_point():
        raise TypeError(f"expected a float tensor in [0, 1], got {type(image).__name__}")
    if image.ndim < 3 or image.shape[-3] != 3:
        raise ValueError(f"expected [..., 3, H, W], got {tuple(image.shape)}")
    q = (image.detach().float() * 255).round().clamp(0, 255).to(torch.uint8).cpu()
    return q.movedim(-3, -1).contiguous()


def to_pil(image: torch.Tensor):
    """One float ``[3, H, W]`` image in [0, 1] -> ``PIL.Image`` (RGB)."""
    from PIL import Image

    if image.ndim != 3:
        raise ValueError(f"to_pil takes one [3, H, W] image, got {tuple(image.shape)}")
    return Image.fromarray(to_uint8(image).numpy())


def save_image(image: torch.Tensor, path: str | os.PathLike) -> Path:
    """Write a ``[3, H, W]`` float image in [0, 1] as PNG (parent folders are created)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"save_image writes PNG; give a .png path, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(image).save(path, format="PNG")
    return path


def list_images(source: str | os.PathLike) -> list[Path]:
    """Image files (PNG/JPEG/WebP, by extension) in a directory (not recursive) or matching a glob pattern
    (``**`` recurses), sorted by path. No match raises ``FileNotFoundError``."""
    source = str(source)
    if os.path.isdir(source):
        files = [p for p in Path(source).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        where = f"directory {source}"
    elif any(c in source for c in "*?["):
        files = [Path(p) for p in glob.glob(source, recursive=True)
                 if os.path.isfile(p) and Path(p).suffix.lower() in IMAGE_EXTENSIONS]
        where = f"glob {source!r}"
    elif os.path.isfile(source):
        files = [Path(source)]
        where = source
    else:
        raise FileNotFoundError(f"no such image directory, file or glob: {source}")
    if not files:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {where}")
    return sorted(files)
