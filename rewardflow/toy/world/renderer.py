"""The toy world's deterministic renderer: a scene (or caption) -> a small uint8 RGB image.

Renderer (:func:`render`)
-------------------------
PIL drawing at 4x supersampling, BOX-downsampled to ``size``.  Each object has
half-size ``U(0.13, 0.19)*size`` and is centred on its position anchor
(quadrant centres at 0.25/0.75 of width/height, or the image centre) with
``U(-0.07, 0.07)*size`` jitter per axis, clamped so the object stays inside the
image.  Objects without a stated position get distinct random anchors.  Object
bounding boxes are resampled until they are separated by at least
``max(1, size/16)`` px, i.e. 2 px at size 32 (a 1 px gap is not always enough
for two same-coloured objects: two 50%-covered edge pixels could join them
into one component).  Each
object's colour is jittered by ``U{-12..12}`` per channel.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from rewardflow.toy.world.grammar import COLORS, POSITIONS, Obj, Scene, _as_scene

# Renderer constants (fractions of the image size unless noted).
SUPERSAMPLE = 4
HALF_SIZE_RANGE = (0.13, 0.19)
POSITION_JITTER = 0.07
COLOR_JITTER = 12

_ANCHORS: dict[str, tuple[float, float]] = {  # (x, y) as fractions of width / height
    "top left": (0.25, 0.25),
    "top right": (0.75, 0.25),
    "bottom left": (0.25, 0.75),
    "bottom right": (0.75, 0.75),
    "center": (0.5, 0.5),
}


# --------------------------------------------------------------------------- #
# Renderer
# --------------------------------------------------------------------------- #


def _layout_boxes(
    scene: Scene, size: int, rng: np.random.Generator
) -> tuple[list[str], list[tuple[float, float, float]]]:
    """Choose anchors and (cx, cy, half) per object with disjoint, margined boxes."""
    n = len(scene.objects)
    margin = max(1.0, size / 16.0)
    fixed = [o.position for o in scene.objects]
    for _ in range(10_000):
        if all(p is not None for p in fixed):
            positions = list(fixed)
        else:
            idx = rng.choice(len(POSITIONS), size=n, replace=False)
            positions = [POSITIONS[int(i)] for i in idx]
        geoms = []
        for p in positions:
            h = rng.uniform(*HALF_SIZE_RANGE) * size
            ax, ay = _ANCHORS[p]
            cx = ax * size + rng.uniform(-POSITION_JITTER, POSITION_JITTER) * size
            cy = ay * size + rng.uniform(-POSITION_JITTER, POSITION_JITTER) * size
            lo, hi = h + 0.5, size - h - 0.5
            geoms.append((float(np.clip(cx, lo, hi)), float(np.clip(cy, lo, hi)), float(h)))
        ok = True
        for (xa, ya, ha), (xb, yb, hb) in itertools.combinations(geoms, 2):
            if abs(xa - xb) < ha + hb + margin and abs(ya - yb) < ha + hb + margin:
                ok = False
                break
        if ok:
            return positions, geoms
    raise RuntimeError(f"could not place the objects of {scene.caption!r} at size {size}")


def render(
    scene: Scene | str,
    size: int = 32,
    rng: np.random.Generator | None = None,
    return_layout: bool = False,
):
    """Render a scene (or caption) to an ``[size, size, 3]`` uint8 image.

    With ``return_layout=True`` returns ``(image, layout)`` where ``layout`` is a
    list of :class:`Obj` carrying the positions actually used, in the order of
    ``scene.objects``.  ``rng=None`` uses fresh OS entropy (non-reproducible).
    """
    scene = _as_scene(scene)
    if rng is None:
        rng = np.random.default_rng()
    s = SUPERSAMPLE
    big = size * s
    img = Image.new("RGB", (big, big), (0, 0, 0))
    draw = ImageDraw.Draw(img)
    positions, geoms = _layout_boxes(scene, size, rng)
    layout = []
    for obj, pos, (cx, cy, h) in zip(scene.objects, positions, geoms):
        base = np.array(COLORS[obj.color], dtype=np.int64)
        col = np.clip(base + rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, size=3), 0, 255)
        fill = tuple(int(v) for v in col)
        X, Y, H = cx * s, cy * s, h * s
        if obj.shape == "circle":
            draw.ellipse([X - H, Y - H, X + H - 1, Y + H - 1], fill=fill)
        elif obj.shape == "square":
            q = 0.9 * H
            draw.rectangle([X - q, Y - q, X + q - 1, Y + q - 1], fill=fill)
        else:  # triangle, pointing up
            draw.polygon([(X - H, Y + H - 1), (X + H - 1, Y + H - 1), (X - 0.5, Y - H)], fill=fill)
        layout.append(Obj(obj.color, obj.shape, pos))
    out = np.asarray(img.resize((size, size), Image.BOX), dtype=np.uint8).copy()
    return (out, layout) if return_layout else out


def render_batch(
    scenes: Sequence[Scene | str],
    size: int = 32,
    rng: np.random.Generator | None = None,
    return_layouts: bool = False,
):
    """Render several scenes to an ``[N, size, size, 3]`` uint8 array."""
    if rng is None:
        rng = np.random.default_rng()
    imgs = np.zeros((len(scenes), size, size, 3), dtype=np.uint8)
    layouts = []
    for i, sc in enumerate(scenes):
        imgs[i], lay = render(sc, size=size, rng=rng, return_layout=True)
        layouts.append(lay)
    return (imgs, layouts) if return_layouts else imgs
