"""Image preprocessing of the reward models, in two forms that serve two kinds of input.

* **Tensor path** (generator outputs inside training and inference-time methods): differentiable, batched torch
  functions on a float batch ``[B, 3, H, W]`` in [0, 1] that keep the autograd graph, so a reward built on them
  passes gradients back to the generator's pixels (:func:`clip_preprocess`).
* **File path** (images read from disk by ``rewardflow score``, ``eval`` and ``eval-rewards``):
  :func:`pil_transform`, the official torchvision-on-PIL pipeline, so a file scores exactly as with the official
  package (see :meth:`rewardflow.rewards.base.Reward.score_files`).

Which official pipeline a model uses decides how the two relate:

* **PIL resize** (OpenAI CLIP ``clip.load`` and open_clip eval transforms, CLIPScore, ImageReward, the LAION
  aesthetic predictor; transformers image processors such as PickScore's): the 8-bit PIL image is resized. PIL's
  bicubic filter is a Keys cubic with ``a = -0.5`` whose support widens by the downscale factor (antialiasing);
  ``torch.nn.functional.interpolate(..., mode="bicubic", antialias=True)`` implements the same filter, so the
  tensor path differs only by PIL's fixed-point arithmetic and the rounding to uint8 after each of its two passes
  (width, then height). PIL also clips the cubic overshoot to [0, 255] after each pass; the tensor path clamps to
  [0, 1] after each pass for the same reason (``resize_to(clamp=True)``). Measured (``tests/test_transforms.py``):
  within 2 uint8 levels of PIL at every pixel, ~0.1-0.2 levels on average.
* **Float-tensor resize** (HPSv2's ``image_transform``: ``ToTensor`` then ``ResizeMaxSize``; VLM-RM: uint8 frames
  to float, then ``Resize``): the image is converted to float first and resized with
  ``torchvision.transforms.functional.resize`` on the tensor (bicubic, antialiased), which is the same
  ``interpolate`` call, and the overshoot is **not** clipped (values run slightly outside [0, 1] before
  normalisation). Here the tensor path is the official pipeline itself (``clamp=False``), equal on files too.

Geometry follows the official pipelines:

* ``resize_shorter`` + ``center_crop``: ``torchvision.transforms.Resize(int)`` + ``CenterCrop`` as used by OpenAI
  CLIP, CLIPScore (jmhessel/clipscore), PickScore (HF ``CLIPImageProcessor``), ImageReward and the LAION aesthetic
  predictor. Resize(int) keeps the aspect ratio with ``long = int(size * long / short)``; CenterCrop uses
  ``top = int(round((h - size) / 2))``.
* ``resize_longest_pad``: ``ResizeMaxSize`` of the open_clip copy vendored in HPSv2
  (tgxs002/HPSv2 ``hpsv2/src/open_clip/transform.py``): ``scale = size / max(h, w)``, new side ``round(side *
  scale)``, then pad with ``fill`` to a square, ``pad_left = pad_w // 2``, ``pad_top = pad_h // 2``, the remainder on
  the right / bottom. (The official class skips the resize *and the pad* when the longest side already equals
  ``size``, so a non-square image of longest side 224 reaches the ViT unpadded and fails there; we always pad to a
  square, which leaves the official result unchanged whenever it has one.)
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

# OpenAI CLIP normalisation (openai/CLIP clip/clip.py ``_transform``; also open_clip OPENAI_DATASET_MEAN/STD).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# torchvision / timm ImageNet normalisation.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_MODES = ("bicubic", "bilinear", "nearest")

__all__ = [
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "resize_to",
    "resize_shorter",
    "center_crop",
    "resize_longest_pad",
    "normalize",
    "clip_preprocess",
    "pil_transform",
]


def _check_images(images: torch.Tensor, fn: str) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{fn}: expected an image batch [B, C, H, W], got {shape}")
    if not images.is_floating_point():
        raise TypeError(f"{fn}: expected a float tensor in [0, 1], got {images.dtype} (convert uint8 with x / 255)")


def resize_to(images: torch.Tensor, size: tuple[int, int], interpolation: str = "bicubic",
              clamp: bool = False) -> torch.Tensor:
    """Resize ``[B, C, H, W]`` to exactly ``(h, w)`` like PIL ``Image.resize`` (antialiased when shrinking).

    ``clamp=True`` reproduces PIL on 8-bit images up to rounding: PIL resamples in two passes, width first, and
    stores the intermediate as uint8, so the cubic overshoot is clipped after *each* pass (a single clamp at the end
    differs by several uint8 levels next to hard edges, e.g. on a rendered image or when upscaling). The resize runs in float32 (the CPU
    antialias kernels do not take fp16) and returns the input dtype.
    """
    _check_images(images, "resize_to")
    if interpolation not in _MODES:
        raise ValueError(f"resize_to: interpolation must be one of {_MODES}, got {interpolation!r}")
    h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"resize_to: target size must be positive, got {(h, w)}")
    if tuple(images.shape[-2:]) == (h, w):
        return images
    dtype = images.dtype
    x = images.float()
    if interpolation == "nearest":
        return F.interpolate(x, size=(h, w), mode="nearest-exact").to(dtype)

    def _resample(t, hw):
        t = F.interpolate(t, size=hw, mode=interpolation, align_corners=False, antialias=True)
        return t.clamp(0.0, 1.0) if clamp else t

    if clamp and x.shape[-1] != w and x.shape[-2] != h:  # PIL: horizontal pass, clip, vertical pass, clip
        return _resample(_resample(x, (x.shape[-2], w)), (h, w)).to(dtype)
    return _resample(x, (h, w)).to(dtype)


def resize_shorter(images: torch.Tensor, size: int, interpolation: str = "bicubic",
                   clamp: bool = False) -> torch.Tensor:
    """Shorter side -> ``size`` keeping the aspect ratio, as ``torchvision.transforms.Resize(size)``."""
    _check_images(images, "resize_shorter")
    h, w = images.shape[-2:]
    short, long = (h, w) if h <= w else (w, h)
    new_short, new_long = int(size), int(int(size) * long / short)  # torchvision truncates the long side
    new_h, new_w = (new_short, new_long) if h <= w else (new_long, new_short)
    return resize_to(images, (new_h, new_w), interpolation, clamp=clamp)


def center_crop(images: torch.Tensor, size: int | Sequence[int], rounding: str = "round") -> torch.Tensor:
    """Central ``size`` crop as ``torchvision.transforms.CenterCrop`` (zero-pads first if the image is smaller).

    ``rounding="round"``: top-left offset ``int(round(d / 2))`` (torchvision); ``"floor"``: ``int(d / 2)`` (HF
    ``CLIPImageProcessor.center_crop``). Python rounds halves to even, so they differ by one pixel only when the
    excess ``d`` is 3, 7, 11, ... (d % 4 == 3).
    """
    _check_images(images, "center_crop")
    if rounding not in ("round", "floor"):
        raise ValueError(f"center_crop: rounding must be 'round' or 'floor', got {rounding!r}")
    ch, cw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    h, w = images.shape[-2:]
    if h < ch or w < cw:  # torchvision pads symmetrically (extra pixel right/bottom) with zeros, then crops
        ph, pw = max(ch - h, 0), max(cw - w, 0)
        images = F.pad(images, (pw // 2, (pw + 1) // 2, ph // 2, (ph + 1) // 2))
        h, w = images.shape[-2:]
    off = (lambda d: int(round(d / 2.0))) if rounding == "round" else (lambda d: int(d / 2.0))
    top, left = off(h - ch), off(w - cw)
    return images[..., top:top + ch, left:left + cw]


def resize_longest_pad(images: torch.Tensor, size: int, fill: float = 0.0, interpolation: str = "bicubic",
                       clamp: bool = False) -> torch.Tensor:
    """Longest side -> ``size`` then pad to ``size x size`` with ``fill`` (HPSv2's open_clip ``ResizeMaxSize``).

    ``fill`` is in the input's value space ([0, 1]); HPSv2 pads with 0 before normalising.
    """
    _check_images(images, "resize_longest_pad")
    h, w = images.shape[-2:]
    scale = size / float(max(h, w))
    new_h, new_w = round(h * scale), round(w * scale)  # Python round, as the official class
    out = resize_to(images, (new_h, new_w), interpolation, clamp=clamp)
    pad_h, pad_w = size - new_h, size - new_w
    if pad_h or pad_w:
        out = F.pad(out, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=float(fill))
    return out


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x - mean) / std`` per channel, as ``torchvision.transforms.Normalize``."""
    _check_images(images, "normalize")
    if len(mean) != images.shape[1] or len(std) != images.shape[1]:
        raise ValueError(f"normalize: {images.shape[1]} channels but mean/std of length {len(mean)}/{len(std)}")
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - m) / s  # subtract, then divide, in the input dtype: torchvision's Normalize bit for bit


def clip_preprocess(images: torch.Tensor, size: int = 224, mean: Sequence[float] = OPENAI_CLIP_MEAN,
                    std: Sequence[float] = OPENAI_CLIP_STD, mode: str = "crop",
                    interpolation: str = "bicubic", crop_rounding: str = "round", clamp: bool = True) -> torch.Tensor:
    """``[B, 3, H, W]`` in [0, 1] -> normalised ``[B, 3, size, size]`` float32, differentiable.

    * ``mode="crop"``: shorter side -> size, centre crop (OpenAI CLIP / CLIPScore / PickScore / ImageReward);
      ``crop_rounding`` as in :func:`center_crop`.
    * ``mode="pad"``: longer side -> size, zero pad to a square (HPSv2 / HPSv2.1).
    * ``mode="squash"``: resize to ``size x size`` ignoring the aspect ratio (VLM-RM, HF processors with a
      ``{"height", "width"}`` size).

    ``clamp=True`` emulates a PIL resize of the 8-bit image (the overshoot clipped after each pass, see
    :func:`resize_to`); ``clamp=False`` is a float-tensor resize as HPSv2 and VLM-RM run it (no clipping).
    """
    _check_images(images, "clip_preprocess")
    if images.shape[1] != 3:
        raise ValueError(f"clip_preprocess: expected RGB images [B, 3, H, W], got {tuple(images.shape)} "
                         "(drop alpha / repeat grey channels first)")
    x = images.float()
    if mode == "crop":
        x = center_crop(resize_shorter(x, size, interpolation, clamp=clamp), size, rounding=crop_rounding)
    elif mode == "pad":
        x = resize_longest_pad(x, size, fill=0.0, interpolation=interpolation, clamp=clamp)
    elif mode == "squash":
        x = resize_to(x, (size, size), interpolation, clamp=clamp)
    else:
        raise ValueError(f"clip_preprocess: mode must be 'crop', 'pad' or 'squash', got {mode!r}")
    return normalize(x, mean, std)


def pil_transform(size: int = 224, mean: Sequence[float] = OPENAI_CLIP_MEAN, std: Sequence[float] = OPENAI_CLIP_STD,
                  mode: str = "crop", interpolation: str = "bicubic"):
    """The official eval transform on a ``PIL.Image`` -> normalised ``[3, size, size]`` float32.

    ``mode="crop"``: ``Resize(size)`` (shorter side, on the PIL image), ``CenterCrop(size)``, ``convert("RGB")``,
    ``ToTensor``, ``Normalize`` -- OpenAI CLIP's ``_transform`` (``clip.load``), which CLIPScore, ImageReward
    (``ImageReward.py`` ``_transform``) and the LAION aesthetic predictor use, and open_clip's eval transform
    (``resize_mode="shortest"``). ``mode="squash"``: ``Resize((size, size))`` instead of the first two steps
    (open_clip ``resize_mode="squash"``). The mode conversion comes after the resize, as in those pipelines, so an
    RGBA image is resized premultiplied and a palette image with nearest-neighbour (PIL's rules), then converted.
    """
    from torchvision import transforms as T

    if mode not in ("crop", "squash"):
        raise ValueError(f"pil_transform: mode must be 'crop' or 'squash' (the 'pad' pipeline of HPSv2 resizes the "
                         f"float tensor: use clip_preprocess(..., clamp=False)), got {mode!r}")
    if interpolation not in _MODES:
        raise ValueError(f"pil_transform: interpolation must be one of {_MODES}, got {interpolation!r}")
    resample = getattr(T.InterpolationMode, interpolation.upper())
    geometry = ([T.Resize(size, interpolation=resample), T.CenterCrop(size)] if mode == "crop"
                else [T.Resize((size, size), interpolation=resample)])
    return T.Compose([*geometry, _to_rgb, T.ToTensor(), T.Normalize(mean, std)])


def _to_rgb(image):
    return image.convert("RGB")
