"""CLIP cosine and CLIPScore, plus the shared CLIP backbone used by HPSv2, PickScore, VLM-RM and lambda-Harmonic.

* ``clip``: ``cos(f_img, f_txt)`` of L2-normalised CLIP embeddings, in [-1, 1].
* ``clipscore``: CLIP-S of Hessel et al. 2021 (arXiv 2104.08718, jmhessel/clipscore ``clipscore.py``
  ``get_clip_score``): ``2.5 * max(cos(f_img, f_txt), 0)`` with the caption prefixed by ``"A photo depicts "``,
  on OpenAI CLIP ViT-B/32 with Resize(224, bicubic) + CenterCrop(224) + OpenAI mean/std.

Both run on open_clip (``model="ViT-B-32", pretrained="openai"``, or a local open_clip checkpoint) or on a
transformers ``CLIPModel`` (a ``save_pretrained`` directory or hub id, ``backend="transformers"``).

:class:`CLIPBackbone` holds a frozen, eval-mode model with the differentiable torch preprocessing of
:mod:`rewardflow.rewards.transforms`; it caches text embeddings per prompt (they do not depend on the pixels).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import partial
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rewardflow.io.images import pil_to_tensor
from rewardflow.rewards.base import Reward, register_reward
from rewardflow.rewards.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_preprocess, pil_transform

_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
           "half": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
_WEIGHT_EXTS = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def looks_like_local_path(ref: str) -> bool:
    """True when ``ref`` can only be a filesystem path (not a hub id ``owner/name``)."""
    ref = str(ref)
    return (os.path.isabs(ref) or ref.startswith((".", "~")) or ref.count("/") > 1 or ref.endswith(_WEIGHT_EXTS)
            or os.sep != "/" and os.sep in ref)


def check_local(ref: str | os.PathLike, what: str) -> None:
    """Raise a clear FileNotFoundError when ``ref`` is a path that does not exist."""
    ref = str(ref)
    if not os.path.exists(os.path.expanduser(ref)) and looks_like_local_path(ref):
        raise FileNotFoundError(f"{what} not found: {ref}")


# ------------------------------------------------------------------------------------------------------------
# Preprocessing spec
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PreprocessSpec:
    """One model's preprocessing: :meth:`__call__` is the differentiable tensor path
    (:func:`~rewardflow.rewards.transforms.clip_preprocess`), :meth:`files` the official path for images read from
    files. ``pil_resize``: the official pipeline resizes the 8-bit PIL image (the tensor path then emulates PIL's
    per-pass clipping, and files go through :func:`~rewardflow.rewards.transforms.pil_transform`); ``False``: it
    converts to float first and resizes the tensor (HPSv2, VLM-RM), so files go through the tensor path itself."""

    size: int = 224
    mode: str = "crop"  # crop | pad | squash
    mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    std: tuple[float, ...] = OPENAI_CLIP_STD
    interpolation: str = "bicubic"
    crop_rounding: str = "round"  # torchvision CenterCrop; "floor" for HF image processors
    pil_resize: bool = True

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return clip_preprocess(images, self.size, self.mean, self.std, self.mode, self.interpolation,
                               crop_rounding=self.crop_rounding, clamp=self.pil_resize)

    def files(self, images: Sequence) -> torch.Tensor:
        """``PIL.Image`` list (as decoded from the files, any mode) -> normalised ``[N, 3, size, size]``."""
        if self.pil_resize:
            if self.crop_rounding != "round":
                raise ValueError("PreprocessSpec.files: the torchvision PIL pipeline crops with rounding='round'; "
                                 "a transformers image processor scores files with its own PIL backend")
            tf = pil_transform(self.size, self.mean, self.std, self.mode, self.interpolation)
            return torch.stack([tf(im) for im in images])
        # ToTensor first (RGB; an alpha channel is dropped), then the official float-tensor resize = the tensor path
        return torch.cat([self(pil_to_tensor(im)[None]) for im in images])


def _field(obj, key):
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


def spec_from_image_processor(proc) -> PreprocessSpec:
    """Map a transformers image processor (CLIPImageProcessor, EfficientNetImageProcessor for ALIGN, ...) to the
    equivalent torch preprocessing: resize (shortest edge + centre crop, or a fixed square), rescale (with
    ALIGN's ``rescale_offset`` to [-1, 1]), normalise."""
    size, crop = _field(proc, "size"), _field(proc, "crop_size")
    resample = _field(proc, "resample")
    resample = int(getattr(resample, "value", resample)) if resample is not None else 3
    interpolation = {2: "bilinear", 3: "bicubic", 0: "nearest"}.get(resample)
    if interpolation is None:
        raise ValueError(f"unsupported image processor resample={resample} (supported: nearest, bilinear, bicubic)")
    short, height, width = _field(size, "shortest_edge"), _field(size, "height"), _field(size, "width")
    do_crop = bool(_field(proc, "do_center_crop"))
    if short:
        crop_h, crop_w = (_field(crop, "height"), _field(crop, "width")) if do_crop else (short, short)
        if not (crop_h == crop_w == short):
            raise ValueError(f"unsupported image processor geometry: shortest_edge={short}, crop={crop_h}x{crop_w} "
                             "(expected the crop to equal the resized shortest edge)")
        mode, out = "crop", int(short)
    elif height and width and height == width:
        if do_crop and (_field(crop, "height"), _field(crop, "width")) != (height, width):
            raise ValueError(f"unsupported image processor geometry: resize {height}x{width} then crop {crop}")
        mode, out = "squash", int(height)
    else:
        raise ValueError(f"unsupported image processor size {size!r} (need shortest_edge or a square height/width)")
    # uint8 u = 255 x. Rescale: u' = u * factor (- 1 with EfficientNet's rescale_offset) = a x + b; normalise:
    # (u' - m) / s (and once more / std with EfficientNet's include_top). As one affine map of x:
    # (x - (m - b) / a) / (s * extra / a).
    factor = float(_field(proc, "rescale_factor") or 1 / 255) if _field(proc, "do_rescale") is not False else 1.0
    a, b = 255.0 * factor, -1.0 if _field(proc, "rescale_offset") else 0.0
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if _field(proc, "do_normalize"):
        mean, std = tuple(_field(proc, "image_mean")), tuple(_field(proc, "image_std"))
    extra = tuple(_field(proc, "image_std")) if _field(proc, "include_top") else (1.0, 1.0, 1.0)
    mean = tuple((m - b) / a for m in mean)
    std = tuple(s * e / a for s, e in zip(std, extra))
    return PreprocessSpec(out, mode, mean, std, interpolation, crop_rounding="floor")


# ------------------------------------------------------------------------------------------------------------
# Backbones
# ------------------------------------------------------------------------------------------------------------
class CLIPBackbone(nn.Module):
    """A frozen dual encoder: ``encode_image(images)`` and ``encode_text(prompts)`` -> L2-normalised float32
    features. Subclasses implement ``_image_features(pixels)`` and ``_text_features(prompts)``.

    ``preprocess`` is the differentiable tensor path; ``file_preprocess`` maps images decoded from files
    (``PIL.Image`` list) to pixels with the official preprocessing (default ``preprocess.files``; a transformers
    backbone passes its image processor's PIL backend)."""

    backend = "?"

    def __init__(self, model: nn.Module, tokenizer, preprocess: PreprocessSpec, *, device=None, dtype=None,
                 name: str = "", file_preprocess: Callable[[list], torch.Tensor] | None = None):
        super().__init__()
        self.model = model.to(device=device, dtype=parse_dtype(dtype)).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self._file_preprocess = file_preprocess
        self.model_name = name
        self._text_cache: dict[str, torch.Tensor] = {}

    def train(self, mode: bool = True):  # the reward model stays in eval mode (dropout off) inside a trainer
        super().train(mode)
        self.model.eval()
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def encode_image(self, images: torch.Tensor | Sequence) -> torch.Tensor:
        """``images``: a float tensor ``[B, 3, H, W]`` in [0, 1] (tensor path, differentiable) or a list of
        ``PIL.Image`` decoded from files (official preprocessing, see :meth:`Reward.score_files`)."""
        if isinstance(images, torch.Tensor):
            pixels = self.preprocess(images.to(self.device))
        else:
            pixels = (self._file_preprocess or self.preprocess.files)(list(images)).to(self.device)
        return F.normalize(self._image_features(pixels.to(self.dtype)).float(), dim=-1)

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """Normalised text embeddings ``[N, D]``; each distinct prompt is encoded once and cached."""
        new = list(dict.fromkeys(p for p in prompts if p not in self._text_cache))
        if new:
            feats = F.normalize(self._text_features(new).float(), dim=-1)
            self._text_cache.update(zip(new, feats))
        return torch.stack([self._text_cache[p] for p in prompts]).to(self.device)

    def clear_text_cache(self) -> None:
        self._text_cache.clear()

    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.detach().float().exp()

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _text_features(self, prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError


class OpenCLIPBackbone(CLIPBackbone):
    """An ``open_clip`` CLIP model (``encode_image`` / ``encode_text``) and its tokenizer."""

    backend = "open_clip"

    def _image_features(self, pixels):
        return self.model.encode_image(pixels)

    def _text_features(self, prompts):
        return self.model.encode_text(self.tokenizer(prompts).to(self.device))


class HFCLIPBackbone(CLIPBackbone):
    """A transformers dual encoder (``CLIPModel``, ``AlignModel``: ``get_image_features`` / ``get_text_features``)."""

    backend = "transformers"

    @staticmethod
    def _pooled(out):  # transformers 5 returns a model output whose pooler_output is the projected embedding
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def _image_features(self, pixels):
        return self._pooled(self.model.get_image_features(pixel_values=pixels))

    def _text_features(self, prompts):
        cfg = getattr(self.model.config, "text_config", self.model.config)
        max_len = min(77, getattr(cfg, "max_position_embeddings", 77) or 77)
        tok = self.tokenizer(prompts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        tok = {k: v.to(self.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
        return self._pooled(self.model.get_text_features(**tok))


def build_open_clip_model(model_name: str):
    """An open_clip architecture with random weights (``pretrained=None``), failing clearly on an unknown name."""
    import open_clip

    try:
        return open_clip.create_model(model_name, pretrained=None)
    except RuntimeError as e:
        if "not found" in str(e).lower():
            raise ValueError(f"unknown open_clip model {model_name!r} ({e}); see open_clip.list_models(), or "
                             "register a config with open_clip.add_model_config(path)") from e
        raise


def open_clip_spec(model, mode: str | None = None) -> PreprocessSpec:
    """The model's own open_clip preprocess config (size, mean/std, interpolation, resize mode)."""
    import open_clip

    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg.get("size", 224)
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    default_mode = {"shortest": "crop", "longest": "pad", "squash": "squash"}.get(cfg.get("resize_mode", "shortest"))
    mode = mode or default_mode or "crop"
    return PreprocessSpec(size=size, mode=mode,
                          mean=tuple(cfg.get("mean", OPENAI_CLIP_MEAN)), std=tuple(cfg.get("std", OPENAI_CLIP_STD)),
                          interpolation=cfg.get("interpolation", "bicubic") or "bicubic",
                          pil_resize=mode != "pad")  # "pad" follows HPSv2 (float-tensor resize)


def load_open_clip_backbone(model_name: str, pretrained: str | None = None, *, mode: str | None = None,
                            device=None, dtype=None) -> OpenCLIPBackbone:
    """open_clip model ``model_name`` with weights ``pretrained`` (a tag such as ``"openai"``, or a local checkpoint
    file, loaded by open_clip with ``weights_only=True``)."""
    import open_clip

    if pretrained is not None:
        check_local(pretrained, f"open_clip checkpoint for {model_name}")
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)  # open_clip logs a failed download before raising; the error below says it
    try:
        tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained) if pretrained and not os.path.isfile(
            os.path.expanduser(str(pretrained))) else None
        if tag_cfg:  # fetch a tag's weights (or find them cached) before building the model: offline fails at once
            open_clip.download_pretrained(tag_cfg)
        model = open_clip.create_model(model_name, pretrained=pretrained)
    except (RuntimeError, OSError) as e:  # open_clip wraps hub errors in RuntimeError
        msg = str(e)
        if "not found" in msg.lower() and "model config" in msg.lower():
            raise ValueError(f"unknown open_clip model {model_name!r}; see open_clip.list_models()") from e
        raise FileNotFoundError(f"could not load open_clip weights {model_name}/{pretrained} (not downloadable: "
                                f"{msg.splitlines()[0][:200]}); give the local checkpoint file: --weights NAME=PATH on the "
                                "command line, reward_kwargs {NAME: {path: PATH}} in a config, path= in Python") \
            from e
    finally:
        logging.disable(previous)
    return OpenCLIPBackbone(model, open_clip.get_tokenizer(model_name), open_clip_spec(model, mode), device=device,
                            dtype=dtype, name=f"{model_name}/{pretrained}")


def load_pil_image_processor(processor: str | os.PathLike):
    """The transformers image processor with its PIL backend (the "slow" processor of transformers 4, the one the
    official PickScore / RPO code ran): PIL resize of the 8-bit image, numpy crop, rescale and normalise."""
    import transformers
    from transformers import AutoImageProcessor

    major = int(transformers.__version__.split(".")[0])
    return AutoImageProcessor.from_pretrained(str(processor), **({"backend": "pil"} if major >= 5 else
                                                                 {"use_fast": False}))


def processor_pixels(image_processor, images: list) -> torch.Tensor:
    """``PIL.Image`` list -> ``pixel_values`` of a transformers image processor (the official file path)."""
    return torch.as_tensor(image_processor(images=images, return_tensors="pt")["pixel_values"])


def load_transformers_backbone(path: str | os.PathLike, processor: str | os.PathLike | None = None, *,
                               mode: str | None = None, device=None, dtype=None) -> HFCLIPBackbone:
    """A transformers ``save_pretrained`` directory or hub id (CLIPModel, AlignModel, ...); tokenizer and image
    processor config from ``processor`` (default: the same place). Files are preprocessed by the image processor's
    PIL backend. ``mode`` (crop / pad / squash) replaces the processor's geometry by the torchvision pipeline of
    :class:`PreprocessSpec` (size, mean and std stay the processor's), for both paths: rewards whose official code
    uses OpenAI CLIP's transform whatever the checkpoint (CLIPScore, the aesthetic predictor) pass ``"crop"``."""
    from transformers import AutoModel, AutoTokenizer

    path, processor = str(path), str(processor or path)
    check_local(path, "transformers model directory")
    check_local(processor, "transformers processor directory")
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{os.path.join(path, 'config.json')} not found: {path} is not a transformers "
                                "save_pretrained directory")
    try:
        model = AutoModel.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(processor)
        image_processor = load_pil_image_processor(processor)
    except OSError as e:
        raise FileNotFoundError(f"could not load {path!r} (processor {processor!r}): {e}. Offline? Download the "
                                "repository and pass its local directory") from e
    spec = spec_from_image_processor(image_processor)
    files = partial(processor_pixels, image_processor)
    if mode is not None:
        spec = PreprocessSpec(spec.size, mode, spec.mean, spec.std, spec.interpolation, pil_resize=mode != "pad")
        files = None  # the torchvision pipeline of the spec
    return HFCLIPBackbone(model, tokenizer, spec, device=device, dtype=dtype, name=path, file_preprocess=files)


def load_clip_backbone(path: str | None = None, *, model: str = "ViT-B-32", pretrained: str | None = "openai",
                       backend: str | None = None, processor: str | None = None, mode: str | None = None,
                       device=None, dtype=None) -> CLIPBackbone:
    """Pick the backend.

    * ``backend="transformers"``, or ``path`` a directory with ``config.json`` / a hub id ``owner/name``:
      transformers (``path`` = model, ``processor`` = tokenizer + image processor, default ``path``).
    * otherwise open_clip: architecture ``model``, weights ``path`` (a checkpoint file) or ``pretrained`` (a tag).
    """
    if backend not in (None, "open_clip", "transformers"):
        raise ValueError(f"backend must be 'open_clip' or 'transformers', got {backend!r}")
    if backend is None:
        is_file = path is not None and (os.path.isfile(path) or str(path).endswith(_WEIGHT_EXTS))
        backend = "transformers" if path is not None and not is_file else "open_clip"
    if backend == "transformers":
        if path is None:
            raise ValueError("backend='transformers' needs the model: a save_pretrained directory or hub id "
                             "(--weights NAME=DIR on the command line, path= in Python)")
        return load_transformers_backbone(path, processor, mode=mode, device=device, dtype=dtype)
    return load_open_clip_backbone(model, path if path is not None else pretrained, mode=mode, device=device,
                                   dtype=dtype)


# ------------------------------------------------------------------------------------------------------------
# Rewards
# ------------------------------------------------------------------------------------------------------------
class CLIPReward(Reward):
    """``cos(f_img, f_txt)``; with ``weight`` set, CLIP-S ``weight * max(cos, 0)`` (Hessel et al. 2021, eq. 1);
    with ``logit_scale=True``, the model's ``logit_scale.exp() * cos`` (about 100x the cosine; the CLIP term of ReNO,
    ExplainableML/ReNO ``rewards/clip.py``)."""

    modality = "image"
    differentiable = True
    file_input = True  # the backbone preprocesses files officially (CLIPBackbone.encode_image)

    def __init__(self, backbone: CLIPBackbone, name: str = "clip", prefix: str = "", weight: float | None = None,
                 logit_scale: bool = False):
        super().__init__()
        if weight is not None and logit_scale:
            raise ValueError("CLIPReward: give weight (CLIP-S) or logit_scale, not both")
        self.backbone = backbone
        self.name = name
        # jmhessel/clipscore: a prefix without a trailing space gets one ("A photo depicts" -> "A photo depicts ")
        self.prefix = prefix if not prefix or prefix.endswith(" ") else prefix + " "
        self.weight = weight
        self.logit_scale = bool(logit_scale)

    def cosine(self, media: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        img = self.backbone.encode_image(media)
        txt = self.backbone.encode_text([self.prefix + p for p in prompts])
        return (img * txt).sum(-1)

    def score(self, media, prompts):
        cos = self.cosine(media, prompts)
        if self.logit_scale:
            return self.backbone.logit_scale().to(cos.device) * cos
        return cos if self.weight is None else self.weight * cos.clamp_min(0.0)


@register_reward("clip", description="CLIP cosine(image, prompt) on open_clip or transformers CLIP")
def _clip(path: str | None = None, model: str = "ViT-B-32", pretrained: str | None = "openai",
          backend: str | None = None, processor: str | None = None, mode: str | None = None, device="cpu",
          dtype=None, logit_scale: bool = False) -> CLIPReward:
    """``logit_scale=True``: score ``logit_scale.exp() * cos`` instead of ``cos`` (ReNO's CLIP term)."""
    bb = load_clip_backbone(path, model=model, pretrained=pretrained, backend=backend, processor=processor, mode=mode,
                            device=device, dtype=dtype)
    return CLIPReward(bb, name="clip", logit_scale=logit_scale)


@register_reward("clipscore", description="CLIPScore 2.5*max(cos,0) with the 'A photo depicts' prefix (Hessel 2021)")
def _clipscore(path: str | None = None, model: str = "ViT-B-32", pretrained: str | None = "openai",
               backend: str | None = None, processor: str | None = None, device="cpu", dtype=None,
               prefix: str = "A photo depicts", weight: float = 2.5) -> CLIPReward:
    bb = load_clip_backbone(path, model=model, pretrained=pretrained, backend=backend, processor=processor,
                            mode="crop", device=device, dtype=dtype)
    return CLIPReward(bb, name="clipscore", prefix=prefix, weight=weight)
