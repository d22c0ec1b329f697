"""Image files <-> tensors.

* :func:`open_image` decodes PNG / JPEG / WebP into a ``PIL.Image`` in the mode it was stored in (RGB, RGBA, L,
  P, ...), what the official reward packages receive from ``Image.open(path)``: each reward's official
  preprocessing converts the mode itself, and they differ (ImageReward, CLIP and the aesthetic predictor resize
  first and then convert to RGB; transformers processors such as PickScore's composite transparency onto white
  first), so :meth:`rewardflow.rewards.base.Reward.score_files` gets the image as stored. A corrupt or truncated
  file raises :class:`ImageReadError` naming the file.
* :func:`load_image` / :func:`pil_to_tensor`: a ``[3, H, W]`` float32 RGB tensor in [0, 1] for the tensor path.
  Palette, grey and CMYK images are converted with PIL's ``convert("RGB")``; an alpha channel is **dropped** (not
  composited).
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
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


class ImageReadError(ValueError):
    """An image file could not be decoded (corrupt, truncated, or not an image)."""


def open_image(path: str | os.PathLike):
    """Decode an image file into a loaded ``PIL.Image`` in its stored mode (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    im = None
    try:
        im = Image.open(path)
        im.load()  # decode now: a truncated file fails here, not later inside a reward
        return im
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        if im is not None:
            im.close()
        raise ImageReadError(f"cannot read image {path}: {type(e).__name__}: {e}") from e


def pil_to_tensor(image) -> torch.Tensor:
    """``PIL.Image`` (any mode) -> ``[3, H, W]`` float32 RGB in [0, 1] (``convert("RGB")``: alpha dropped)."""
    arr = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file as ``[3, H, W]`` float32 RGB in [0, 1] (alpha dropped, see the module docstring)."""
    return pil_to_tensor(open_image(path))


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
