"""The toy world's oracle: a strict, GenEval-style check that an image satisfies a caption, and its object detector.

Oracle (:func:`oracle`, :func:`detect_objects`)
-----------------------------------------------
1. Per-pixel colour: for each palette colour ``p``, ``alpha = x.p / p.p`` and
   residual ``|x - alpha p|``; a pixel gets label ``p`` if ``alpha >= 0.5`` and
   the residual is ``< 50`` (smallest residual wins when several qualify).
2. 4-connected components per colour; components smaller than 2% of the image
   area are dropped.
3. Shape: soft IoU (``sum(min(a, t)) / sum(max(a, t))``) of the component's
   coverage map ``a`` against circle, square and triangle coverage templates
   ``t``; best IoU wins.  ``a`` is the component colour's ``alpha`` (clipped to
   [0, 1]) on the component and on its unlabelled 1-px fringe; each template
   is rasterised (5x5 sub-samples per pixel) with the component's total
   coverage as its area and the coverage centroid as its centroid.  This is
   the "IoU against templates fitted to the object" of GenEval, made
   sub-pixel accurate: with binary masks fitted to the bounding box, the small
   squares (7-11 px) and circles of a 32 px image become indistinguishable once
   blurred (both lose ~3 px per corner), while area and centroid are
   preserved by blur.  A bbox aspect ratio > 2, or a best IoU below
   :data:`MIN_SHAPE_IOU`, gives shape ``"blob"``, which never matches.
4. Position: bounding-box centre; ``center`` if within ``0.12*size`` of the
   image centre on both axes, else the quadrant.
5. Pass: exactly as many detected objects as the caption names, and a one-to-one
   assignment matching colour and shape (plus position where the caption gives
   one).  Any extra object fails.

:func:`oracle_score` gives partial credit ``matched / max(n_requested,
n_detected)`` where ``matched`` is the size of the best partial assignment;
it is 1.0 exactly when :func:`oracle` passes.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from rewardflow.toy.world.grammar import COLORS, SHAPES, Obj, Scene, _as_scene

# Oracle constants (fractions of the image size unless noted).
CENTER_TOL = 0.12
MIN_AREA_FRAC = 0.02
ALPHA_MIN = 0.5
RESIDUAL_MAX = 50.0
MAX_ASPECT = 2.0
#: Best template IoU below this makes a component a "blob" (never matches).
MIN_SHAPE_IOU = 0.6

_PALETTE_NAMES: tuple[str, ...] = tuple(COLORS)
_PALETTE = np.array([COLORS[c] for c in _PALETTE_NAMES], dtype=np.float32)  # [K,3]
_PALETTE_PP = (_PALETTE**2).sum(1)  # [K]


# --------------------------------------------------------------------------- #
# Oracle
# --------------------------------------------------------------------------- #


def _to_hwc_uint8(image) -> np.ndarray:
    """Accept HxWx3 / 3xHxW, uint8 or float in [0,1] (numpy or torch) -> HxWx3 uint8."""
    if hasattr(image, "detach"):  # torch tensor, without importing torch
        image = image.detach().cpu().numpy()
    a = np.asarray(image)
    if a.ndim != 3:
        raise ValueError(f"expected a 3-d image, got shape {a.shape}")
    if a.shape[-1] != 3 and a.shape[0] == 3:
        a = np.moveaxis(a, 0, -1)
    if a.shape[-1] != 3:
        raise ValueError(f"expected 3 colour channels, got shape {a.shape}")
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating):
            a = np.clip(np.nan_to_num(a.astype(np.float32)) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        else:
            a = np.clip(a, 0, 255).astype(np.uint8)
    return a


def _classify_pixels(img: np.ndarray, return_alpha: bool = False):
    """HxWx3 uint8 -> HxW int labels (index into the palette, -1 = background).

    With ``return_alpha`` also returns the per-colour coverage ``alpha`` [H,W,K].
    """
    x = img.reshape(-1, 3).astype(np.float32)
    dot = x @ _PALETTE.T  # [P,K]
    alpha = dot / _PALETTE_PP
    res2 = (x * x).sum(1, keepdims=True) - dot * alpha  # |x|^2 - (x.p)^2/(p.p)
    ok = (alpha >= ALPHA_MIN) & (res2 < RESIDUAL_MAX**2)
    res2 = np.where(ok, res2, np.inf)
    lab = res2.argmin(1)
    lab[~ok.any(1)] = -1
    lab = lab.reshape(img.shape[:2])
    if return_alpha:
        return lab, alpha.reshape(*img.shape[:2], -1)
    return lab


def _label_components(cls: np.ndarray) -> np.ndarray:
    """4-connected components of equal, non-negative class.

    Min-label propagation with pointer jumping; returns HxW int labels where each
    foreground pixel holds the smallest flat index of its component and the
    background holds ``H*W``.
    """
    H, W = cls.shape
    bg = H * W
    fg = cls >= 0
    lab = np.where(fg, np.arange(H * W).reshape(H, W), bg)
    eq_r = fg[:, :-1] & (cls[:, :-1] == cls[:, 1:])
    eq_d = fg[:-1, :] & (cls[:-1, :] == cls[1:, :])
    fg_flat = fg.ravel()
    while True:
        new = lab.copy()
        m = np.minimum(lab[:, :-1], lab[:, 1:])
        new[:, :-1] = np.where(eq_r, np.minimum(new[:, :-1], m), new[:, :-1])
        new[:, 1:] = np.where(eq_r, np.minimum(new[:, 1:], m), new[:, 1:])
        m = np.minimum(new[:-1, :], new[1:, :])
        new[:-1, :] = np.where(eq_d, np.minimum(new[:-1, :], m), new[:-1, :])
        new[1:, :] = np.where(eq_d, np.minimum(new[1:, :], m), new[1:, :])
        flat = new.ravel()
        for _ in range(2):  # pointer jumping: a label is a pixel of the same component
            flat[fg_flat] = flat[flat[fg_flat]]
        if np.array_equal(new, lab):
            return new
        lab = new


_SUBSAMPLE = 5  # sub-samples per pixel axis when rasterising shape templates


def _template_coverage(shape: str, cx: float, cy: float, area: float, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """Coverage map ``[h, w]`` (in [0,1]) of a shape of given area whose centroid is
    ``(cx, cy)``, over the pixel window with top-left pixel ``(x0, y0)``."""
    k = _SUBSAMPLE
    Y = (y0 + (np.arange(h * k) + 0.5) / k)[:, None]
    X = (x0 + (np.arange(w * k) + 0.5) / k)[None, :]
    if shape == "circle":
        inside = (X - cx) ** 2 + (Y - cy) ** 2 <= area / np.pi
    elif shape == "square":
        q = np.sqrt(area) / 2.0
        inside = (np.abs(X - cx) <= q) & (np.abs(Y - cy) <= q)
    else:  # upward triangle, base = height = 2t; its centroid lies t/3 below the box centre
        t = np.sqrt(area / 2.0)
        yc = cy - t / 3.0
        inside = (Y <= yc + t) & (2.0 * np.abs(X - cx) <= Y - (yc - t))
    return inside.reshape(h, k, w, k).mean(axis=(1, 3))


def _classify_shape(soft: np.ndarray, y0: int, x0: int, bbox_hw: tuple[int, int]) -> tuple[str, float]:
    """Best-fitting shape for a component's coverage map ``soft`` (window at ``(x0, y0)``).

    Each template is placed with the component's (coverage-weighted) area and
    centroid -- both preserved by blur -- and scored by soft IoU
    ``sum(min(a, t)) / sum(max(a, t))``.
    """
    bh, bw = bbox_hw
    if max(bh, bw) > MAX_ASPECT * min(bh, bw):
        return "blob", 0.0
    h, w = soft.shape
    area = float(soft.sum())
    if area <= 0:
        return "blob", 0.0
    ys = y0 + np.arange(h) + 0.5
    xs = x0 + np.arange(w) + 0.5
    cy = float((soft.sum(1) * ys).sum() / area)
    cx = float((soft.sum(0) * xs).sum() / area)
    best, best_iou = "blob", 0.0
    for shape in SHAPES:
        t = _template_coverage(shape, cx, cy, area, y0, x0, h, w)
        iou = float(np.minimum(soft, t).sum() / np.maximum(soft, t).sum())
        if iou > best_iou:
            best, best_iou = shape, iou
    if best_iou < MIN_SHAPE_IOU:
        return "blob", best_iou
    return best, best_iou


def _position_of(cx: float, cy: float, H: int, W: int) -> str:
    if abs(cx - W / 2) <= CENTER_TOL * W and abs(cy - H / 2) <= CENTER_TOL * H:
        return "center"
    return ("top" if cy < H / 2 else "bottom") + " " + ("left" if cx < W / 2 else "right")


def detect_objects(image) -> list[dict]:
    """Detect objects in an image (HxWx3 or 3xHxW; uint8 or float in [0,1]).

    Returns one dict per kept component, sorted by (top, left), with keys
    ``color``, ``shape`` (``"blob"`` if no shape fits), ``position``,
    ``bbox`` = ``(x0, y0, x1, y1)`` in pixels with exclusive ``x1``/``y1``,
    ``area`` (pixels), ``iou`` (best template IoU) and ``center`` (bbox centre, x/y).
    """
    img = _to_hwc_uint8(image)
    H, W = img.shape[:2]
    cls, alpha = _classify_pixels(img, return_alpha=True)
    lab = _label_components(cls).ravel()
    counts = np.bincount(lab, minlength=H * W + 1)[: H * W]
    roots = np.flatnonzero(counts >= MIN_AREA_FRAC * H * W)
    out: list[dict] = []
    if roots.size == 0:
        return out
    lab2 = lab.reshape(H, W)
    unlabelled = cls < 0
    for r in roots:
        k = int(cls.flat[r])
        ys, xs = np.nonzero(lab2 == r)
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        # coverage window: bbox + 1 px; the component plus its unlabelled 8-neighbour
        # ring (anti-aliased / blurred fringe below the 50% threshold)
        wy0, wy1, wx0, wx1 = max(y0 - 1, 0), min(y1 + 1, H), max(x0 - 1, 0), min(x1 + 1, W)
        comp = lab2[wy0:wy1, wx0:wx1] == r
        pad = np.pad(comp, 1)
        ring = np.zeros_like(comp)
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                ring |= pad[dy : dy + comp.shape[0], dx : dx + comp.shape[1]]
        keep = comp | (ring & unlabelled[wy0:wy1, wx0:wx1])
        soft = np.where(keep, np.clip(alpha[wy0:wy1, wx0:wx1, k], 0.0, 1.0), 0.0)
        shape, iou = _classify_shape(soft, wy0, wx0, (y1 - y0, x1 - x0))
        cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
        out.append(
            {
                "color": _PALETTE_NAMES[k],
                "shape": shape,
                "position": _position_of(cx, cy, H, W),
                "bbox": (x0, y0, x1, y1),
                "area": int(counts[r]),
                "iou": iou,
                "center": (cx, cy),
            }
        )
    out.sort(key=lambda d: (d["bbox"][1], d["bbox"][0]))
    return out


def _matches(req: Obj, det: dict) -> bool:
    return (
        det["color"] == req.color
        and det["shape"] == req.shape
        and (req.position is None or det["position"] == req.position)
    )


def _max_matching(requested: Sequence[Obj], detected: Sequence[dict]) -> int:
    """Size of the largest one-to-one assignment requested -> detected (brute force)."""
    nr, nd = len(requested), len(detected)
    if nr == 0 or nd == 0:
        return 0
    ok = [[_matches(r, d) for d in detected] for r in requested]
    best = 0
    k = min(nr, nd)
    for rs in itertools.combinations(range(nr), k):
        for ds in itertools.permutations(range(nd), k):
            m = sum(ok[r][d] for r, d in zip(rs, ds))
            if m > best:
                best = m
                if best == k:
                    return best
    return best


def _score(image, caption) -> tuple[bool, float]:
    scene = _as_scene(caption)
    dets = detect_objects(image)
    req = scene.objects
    matched = _max_matching(req, dets)
    passed = len(dets) == len(req) and matched == len(req)
    return passed, matched / max(len(req), len(dets))


def oracle(image, caption: str | Scene) -> bool:
    """Strict GenEval-style check: exactly the requested objects, nothing else."""
    return _score(image, caption)[0]


def oracle_score(image, caption: str | Scene) -> float:
    """Partial credit in [0, 1]: ``matched / max(n_requested, n_detected)``.

    ``matched`` is the size of the best one-to-one assignment of requested
    objects to detected objects (colour and shape, plus position where the
    caption gives one).  Extra detected objects enlarge the denominator, so the
    score is 1.0 exactly when :func:`oracle` passes.  Example: a two-object
    caption with only one of its objects drawn scores 0.5; one correct object
    plus one wrong object also scores 0.5; both correct plus an extra scores 2/3.
    """
    return _score(image, caption)[1]


def _batch_images(images) -> list[np.ndarray]:
    if hasattr(images, "detach"):
        images = images.detach().cpu().numpy()
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4:
            raise ValueError(f"expected [N,H,W,3] or [N,3,H,W] images, got shape {images.shape}")
        return [images[i] for i in range(images.shape[0])]
    return list(images)


def _batch_captions(captions, n: int) -> list:
    if isinstance(captions, (str, Scene)):
        return [captions] * n
    caps = list(captions)
    if len(caps) != n:
        raise ValueError(f"got {n} images but {len(caps)} captions")
    return caps


def oracle_batch(images, captions) -> np.ndarray:
    """:func:`oracle` over a batch -> bool array ``[N]``.

    ``images``: uint8 ``[N,H,W,3]`` or float ``[N,3,H,W]`` in [0,1] (numpy or
    torch; float HWC / uint8 CHW are accepted too).  ``captions``: a sequence
    of N strings / Scenes, or one caption for all images.
    """
    imgs = _batch_images(images)
    caps = _batch_captions(captions, len(imgs))
    return np.array([oracle(im, c) for im, c in zip(imgs, caps)], dtype=bool)


def oracle_score_batch(images, captions) -> np.ndarray:
    """:func:`oracle_score` over a batch -> float32 array ``[N]`` (same inputs as :func:`oracle_batch`)."""
    imgs = _batch_images(images)
    caps = _batch_captions(captions, len(imgs))
    return np.array([oracle_score(im, c) for im, c in zip(imgs, caps)], dtype=np.float32)
