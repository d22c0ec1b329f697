"""Distributional rewards (DRAGON, Bai et al., arXiv 2504.15217; docs/algorithms.md#dragon, docs/rewards.md#distributional).

A reward that looks at a *set* of generations and/or a *reference exemplar set*, through an embedding encoder:

* **instance-to-distribution** — :class:`ExemplarSimilarityReward`: cosine similarity of one generation's embedding to
  the mean embedding of the reference exemplars (a per-sample scalar; usable by every method);
* **distribution-to-distribution** — :class:`FrechetReward` (minus the Fréchet distance between Gaussian fits of the
  generated set's and the reference set's embeddings, FID/FAD-style) and :class:`VendiReward` (the Vendi diversity
  score of the generated set). These are *set-level*: ``score_set(media, prompts)`` returns one number for the
  batch, and the per-sample ``reward(media, prompts)`` returns each sample's leave-one-out contribution
  ``R(D) - R(D \\ {i})`` (docs/rewards.md#leave-one-out), which is what DRAGON splits into positive and negative sets.

Math (implemented here with torch only, float64):

* ``FD = ||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1^1/2 S2 S1^1/2)^1/2)`` — both square roots of symmetric PSD
  matrices by ``torch.linalg.eigh`` (eigenvalues clamped at 0), which equals ``Tr((S1 S2)^1/2)`` without a general
  (non-symmetric) matrix square root;
* ``Vendi = exp(-sum_i l_i log l_i)`` with ``l`` the eigenvalues of ``K / n``, ``K`` a similarity kernel with
  ``k(x, x) = 1`` (cosine of L2-normalised embeddings), in [1, n].

Reference statistics (mean, covariance, mean direction, count) are cached on disk as safetensors, keyed by a SHA-256
of the encoder identity (including a hash of its weights) and of the reference set (file contents, or the recipe of
rendered toy images).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from rewardflow.io.paths import respect_umask
from rewardflow.plugins import load_plugins
from rewardflow.rewards.base import Reward, register_reward
from rewardflow.rewards.clip import load_clip_backbone

_CACHE_VERSION = "1"


# --------------------------------------------------------------------------------------------- math
def gaussian_stats(emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased, ddof=1 as pytorch-fid's ``np.cov``) covariance of ``[N, D]`` embeddings, float64."""
    if emb.ndim != 2 or emb.shape[0] < 2:
        raise ValueError(f"gaussian_stats needs [N >= 2, D] embeddings, got {tuple(emb.shape)}")
    x = emb.double()
    mu = x.mean(0)
    xc = x - mu
    return mu, xc.T @ xc / (x.shape[0] - 1)


def _psd_sqrt(m: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix via its eigendecomposition."""
    m = 0.5 * (m + m.T)
    w, v = torch.linalg.eigh(m)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor,
                     eps: float = 0.0) -> torch.Tensor:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (squared 2-Wasserstein), float64 scalar.

    ``eps`` adds eps * I to both covariances (shrinkage for rank-deficient estimates from few samples)."""
    mu1, mu2, s1, s2 = mu1.double(), mu2.double(), sigma1.double(), sigma2.double()
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.numel(), mu1.numel()):
        raise ValueError(f"frechet_distance: shape mismatch mu {tuple(mu1.shape)}/{tuple(mu2.shape)}, "
                         f"sigma {tuple(s1.shape)}/{tuple(s2.shape)}")
    if eps > 0:
        eye = torch.eye(s1.shape[0], dtype=s1.dtype, device=s1.device)
        s1, s2 = s1 + eps * eye, s2 + eps * eye
    r1 = _psd_sqrt(s1)
    inner = r1 @ s2 @ r1
    w = torch.linalg.eigvalsh(0.5 * (inner + inner.T))
    tr_covmean = w.clamp(min=0).sqrt().sum()
    fd = (mu1 - mu2).pow(2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * tr_covmean
    return fd.clamp(min=0)


def vendi_score_from_kernel(k: torch.Tensor) -> torch.Tensor:
    """Vendi score of an ``[n, n]`` PSD similarity matrix with unit diagonal: exp of the Shannon entropy of the
    eigenvalues of ``K / n`` (0 log 0 = 0)."""
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"vendi_score_from_kernel needs a square matrix, got {tuple(k.shape)}")
    k = k.double()
    lam = torch.linalg.eigvalsh(0.5 * (k + k.T) / k.shape[0]).clamp(min=0)
    ent = -(lam * torch.where(lam > 0, lam.log(), torch.zeros_like(lam))).sum()
    return ent.exp()


def vendi_score(emb: torch.Tensor) -> torch.Tensor:
    """Vendi score of ``[n, D]`` embeddings with the cosine kernel (L2-normalised embeddings)."""
    x = F.normalize(emb.double(), dim=-1)
    return vendi_score_from_kernel(x @ x.T)


def leave_one_out(values: Callable[[torch.Tensor], torch.Tensor], emb: torch.Tensor) -> torch.Tensor:
    """``R(D) - R(D \\ {i})`` for every i: how much sample i adds to a set-level reward ``values(emb)``."""
    full = values(emb)
    n = emb.shape[0]
    keep = ~torch.eye(n, dtype=torch.bool)
    return torch.stack([full - values(emb[keep[i]]) for i in range(n)]).float()


# --------------------------------------------------------------------------------------------- encoders
class ImageEncoder:
    """An image embedder for distributional rewards: ``encoder(images in [0, 1], [B, 3, H, W]) -> [B, D]`` plus an
    ``id`` string that identifies the weights (used in the reference-statistics cache key). ``module``: the network
    behind ``fn``, registered by the reward so that ``reward.to(device)`` moves it."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], id: str, module: torch.nn.Module | None = None):
        self.fn, self.id, self.module = fn, id, module

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
        return torch.cat([self.fn(images[i:i + batch]).float().cpu() for i in range(0, len(images), batch)])


def _hash_files(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


_ENCODERS: dict[str, Callable[..., ImageEncoder]] = {}
_REFERENCE_SETS: dict[str, Callable[[int, int, int | None], tuple[torch.Tensor, str]]] = {}


def register_encoder(name: str):
    """Decorator: ``factory(path=None, device="cpu") -> ImageEncoder`` becomes the encoder ``name`` of the
    distributional rewards (plugins register theirs, e.g. the toy world's ``toy_clip``)."""

    def deco(factory):
        if name in _ENCODERS:
            raise ValueError(f"encoder {name!r} is already registered")
        _ENCODERS[name] = factory
        return factory

    return deco


def register_reference_set(name: str):
    """Decorator: ``loader(n, seed, image_size) -> (images [n, 3, H, W] in [0, 1], id)`` becomes the reference
    exemplar set ``name`` (``id`` identifies the set in the statistics cache)."""

    def deco(loader):
        if name in _REFERENCE_SETS:
            raise ValueError(f"reference set {name!r} is already registered")
        _REFERENCE_SETS[name] = loader
        return loader

    return deco


def load_encoder(name: str | ImageEncoder, path: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu") -> ImageEncoder:
    """A registered encoder by name (``clip``: a CLIP image tower; plugins add more), with weights from ``path``."""
    if isinstance(name, ImageEncoder):
        return name
    load_plugins()
    if name not in _ENCODERS:
        raise KeyError(f"unknown encoder {name!r}; known encoders: {', '.join(sorted(_ENCODERS))} "
                       "(or pass an ImageEncoder(fn, id) from Python)")
    return _ENCODERS[name](path=path, device=device)


@register_encoder("clip")
def _clip_encoder(path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                  model: str = "ViT-B-32", pretrained: str | None = "openai") -> ImageEncoder:
    """L2-normalised CLIP image embeddings (open_clip ``model`` + ``pretrained``, or a local CLIP checkpoint/folder
    at ``path``), with the CLIP reward's differentiable preprocessing."""
    backbone = load_clip_backbone(None if path is None else str(path), model=model, pretrained=pretrained,
                                  device=device)
    if path is not None:
        p = Path(path)
        ident = _hash_files([f for f in (p.rglob("*") if p.is_dir() else [p]) if f.is_file()])
    else:
        ident = f"{model}:{pretrained}"
    return ImageEncoder(lambda x: F.normalize(backbone.encode_image(x.to(backbone.device)).float(), dim=-1),
                        f"clip:{ident}", backbone)


# --------------------------------------------------------------------------------------------- reference sets
def default_cache_dir() -> Path:
    env = os.environ.get("REWARDFLOW_CACHE")
    return Path(env) / "distributional" if env else Path.home() / ".cache" / "rewardflow" / "distributional"


def _image_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp"))
    if not files:
        raise FileNotFoundError(f"no images (png/jpg/webp/bmp) in reference folder {folder}")
    return files


def _load_images(files: Sequence[Path], size: int | None) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    out = []
    for f in files:
        im = Image.open(f).convert("RGB")
        if size is not None:
            im = im.resize((size, size), Image.BICUBIC)
        out.append(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255.0)
    if len({tuple(t.shape) for t in out}) > 1:
        raise ValueError("reference images have different sizes; pass image_size to resize them")
    return torch.stack(out)


class ReferenceStats:
    """Statistics of a reference exemplar set under an encoder: ``mu``, ``sigma``, ``direction`` (unit mean of the
    L2-normalised embeddings), ``count``. Built once and cached on disk (safetensors) under a hash key."""

    def __init__(self, mu: torch.Tensor, sigma: torch.Tensor, direction: torch.Tensor, count: int, key: str = ""):
        self.mu, self.sigma, self.direction, self.count, self.key = mu, sigma, direction, count, key

    @classmethod
    def from_embeddings(cls, emb: torch.Tensor, key: str = "") -> "ReferenceStats":
        mu, sigma = gaussian_stats(emb)
        direction = F.normalize(F.normalize(emb.double(), dim=-1).mean(0), dim=0)
        return cls(mu, sigma, direction, emb.shape[0], key)

    @classmethod
    def build(cls, encoder: ImageEncoder, reference: str | os.PathLike, n: int = 512, seed: int = 0,
              image_size: int | None = None, cache_dir: str | os.PathLike | None = None) -> "ReferenceStats":
        """``reference``: a folder of images, or a registered reference set (:func:`register_reference_set`; ``n``
        images drawn with ``seed``). Loaded from ``cache_dir`` when the same encoder and reference set were seen
        before."""
        load_plugins()
        if str(reference) in _REFERENCE_SETS:
            images, ref_id = _REFERENCE_SETS[str(reference)](n, seed, image_size)
            loader = lambda: images
        else:
            folder = Path(reference)
            if not folder.is_dir():
                known = ", ".join(sorted(_REFERENCE_SETS)) or "none registered"
                raise FileNotFoundError(f"reference exemplar folder not found: {folder} (give a folder of images, "
                                        f"or a registered reference set: {known})")
            files = _image_files(folder)
            ref_id = f"folder:{_hash_files(files)}:{image_size}"
            loader = lambda: _load_images(files, image_size)
        key = hashlib.sha256(f"v{_CACHE_VERSION}|{encoder.id}|{ref_id}".encode()).hexdigest()[:32]
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        f = cache / f"{key}.safetensors"
        if f.is_file():
            return cls.load(f, key)
        stats = cls.from_embeddings(encoder(loader()), key)
        stats.save(f)
        return stats

    def save(self, path: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file({"mu": self.mu.contiguous(), "sigma": self.sigma.contiguous(),
                   "direction": self.direction.contiguous(), "count": torch.tensor([self.count])}, str(tmp),
                  metadata={"key": self.key, "version": _CACHE_VERSION})
        respect_umask(tmp)  # safetensors writes 0600 whatever the umask
        os.replace(tmp, path)  # atomic: a concurrent reader never sees a half-written file

    @classmethod
    def load(cls, path: str | os.PathLike, key: str = "") -> "ReferenceStats":
        from safetensors.torch import load_file

        t = load_file(str(path))
        return cls(t["mu"], t["sigma"], t["direction"], int(t["count"][0]), key)


# --------------------------------------------------------------------------------------------- rewards
class _EmbeddingReward(Reward):
    differentiable = False
    modality = "image"

    def __init__(self, encoder: ImageEncoder, stats: ReferenceStats | None = None):
        super().__init__()
        self.encoder, self.stats = encoder, stats
        if encoder.module is not None:
            self.encoder_module = encoder.module  # registered: reward.to(device) moves the encoder

    def embed(self, media: torch.Tensor) -> torch.Tensor:
        return self.encoder(media.detach())


class ExemplarSimilarityReward(_EmbeddingReward):
    """Instance-to-distribution: cosine similarity between a generation's embedding and the reference exemplars'
    mean direction (docs/algorithms.md#dragon-rewards), per sample, in [-1, 1]."""

    name = "exemplar_similarity"

    def score(self, media, prompts):
        e = F.normalize(self.embed(media).double(), dim=-1)
        return (e @ self.stats.direction.double()).float()


class SetReward(_EmbeddingReward):
    """A set-level reward. ``score_set`` is the value for the whole batch; the per-sample score is each sample's
    leave-one-out contribution ``R(D) - R(D \\ {i})`` (positive: the sample improves the set)."""

    set_level = True
    min_set_size = 2

    def set_value(self, emb: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def score_set(self, media: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        self.check_inputs(media, prompts)
        return self.set_value(self.embed(media)).float()

    def score(self, media, prompts):
        if media.shape[0] < self.min_set_size + 1:
            raise ValueError(f"{self.name} is a set-level reward: leave-one-out contributions need at least "
                             f"{self.min_set_size + 1} samples in the batch, got {media.shape[0]}")
        return leave_one_out(self.set_value, self.embed(media))


class FrechetReward(SetReward):
    """Distribution-to-distribution: ``-FD`` between the Gaussian fit of the batch's embeddings and the reference
    exemplars' (FID / FAD as a reward). ``eps`` shrinks both covariances (few samples per batch)."""

    name = "frechet"

    def __init__(self, encoder: ImageEncoder, stats: ReferenceStats, eps: float = 1e-6):
        super().__init__(encoder, stats)
        self.eps = eps

    def set_value(self, emb):
        mu, sigma = gaussian_stats(emb)
        return -frechet_distance(mu, sigma, self.stats.mu, self.stats.sigma, eps=self.eps)


class VendiReward(SetReward):
    """Distribution-level diversity: the Vendi score of the batch (cosine kernel), in [1, n]."""

    name = "vendi"
    min_set_size = 1

    def set_value(self, emb):
        return vendi_score(emb)


def _stats(encoder: ImageEncoder, reference, n_reference, seed, image_size, cache_dir) -> ReferenceStats:
    return ReferenceStats.build(encoder, reference, n=n_reference, seed=seed, image_size=image_size,
                                cache_dir=cache_dir)


@register_reward("frechet", differentiable=False,
                 description="set-level -Fréchet distance of encoder embeddings to a reference exemplar set (DRAGON)")
def _frechet(encoder: str | ImageEncoder, reference: str, encoder_path: str | None = None,
             n_reference: int = 512, seed: int = 0, image_size: int | None = None, cache_dir: str | None = None,
             eps: float = 1e-6) -> FrechetReward:
    enc = load_encoder(encoder, encoder_path)
    return FrechetReward(enc, _stats(enc, reference, n_reference, seed, image_size, cache_dir), eps=eps)


@register_reward("vendi", differentiable=False, description="set-level Vendi diversity score of encoder embeddings")
def _vendi(encoder: str | ImageEncoder, encoder_path: str | None = None) -> VendiReward:
    return VendiReward(load_encoder(encoder, encoder_path))


@register_reward("exemplar_similarity", differentiable=False,
                 description="cosine similarity of an image's embedding to a reference exemplar set's mean (DRAGON)")
def _exemplar(encoder: str | ImageEncoder, reference: str, encoder_path: str | None = None,
              n_reference: int = 512, seed: int = 0, image_size: int | None = None,
              cache_dir: str | None = None) -> ExemplarSimilarityReward:
    enc = load_encoder(encoder, encoder_path)
    return ExemplarSimilarityReward(enc, _stats(enc, reference, n_reference, seed, image_size, cache_dir))
