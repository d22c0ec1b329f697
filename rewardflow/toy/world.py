"""A toy compositional world: GenEval in miniature.

Small (default 32x32) images of coloured geometric objects on a black
background, a closed caption grammar that describes them, a deterministic
renderer and a strict, GenEval-style *oracle* that decides whether an image
satisfies a caption.  It is meant as a cheap, exactly-verifiable stand-in for
text-to-image alignment experiments (rewards, held-out compositional
generalisation, noisy captions) that runs in milliseconds on a CPU.

Vocabulary
----------
Colours (RGB, see :data:`COLORS`)::

    red (220,30,30)   orange (245,140,20)   yellow (235,225,30)
    green (30,180,40) blue (30,70,230)      purple (150,40,210)
    white (235,235,235)

Shapes: ``circle``, ``square`` (drawn at 0.9 of its box so that the areas of
the three shapes are comparable), ``triangle`` (pointing up); plurals
``circles``, ``squares``, ``triangles``.

Positions: ``top left``, ``top right``, ``bottom left``, ``bottom right``,
``center``.

Caption categories (:data:`CATEGORIES`)
---------------------------------------
============  ======================================================================
category      canonical caption
============  ======================================================================
single        ``a red circle``
single_pos    ``a red circle at the top left`` / ``a red circle at the center``
two_obj       ``a red circle and a blue square`` (objects differ in colour or shape)
counting      ``two red circles``
two_pos       ``a red circle at the top left and a blue square at the bottom right``
              (the two positions differ; the objects may be identical)
============  ======================================================================

The article is ``an`` before ``orange`` (``an orange circle``);
:func:`parse_caption` accepts either article.  Object order matters for
:class:`Scene` equality (``a red circle and a blue square`` and
``a blue square and a red circle`` are two captions / two ``Scene`` values)
but not for the oracle; :attr:`Scene.key` is the order-free semantic key.

Caption space sizes (:func:`all_captions`): single 21, single_pos 105,
two_obj 420, counting 21, two_pos 8820 (9387 in total).

Held-out split (:func:`split_captions`)
---------------------------------------
Structural, by composition: the four (colour, shape) pairs in
:data:`HELDOUT_PAIRS` -- (red, triangle), (yellow, circle), (green, square),
(purple, circle) -- never occur in ``train``; every colour and every shape
still does.  A caption is ``heldout`` iff any of its objects uses a held-out
pair.  Counts (train / heldout):

============  =======  =========
category      train    heldout
============  =======  =========
single        17       4
single_pos    85       20
two_obj       272      148
counting      17       4
two_pos       5780     3040
total         6171     3216
============  =======  =========

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

import functools
import itertools
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "COLORS",
    "SHAPES",
    "PLURALS",
    "POSITIONS",
    "CATEGORIES",
    "VOCAB",
    "HELDOUT_PAIRS",
    "MIN_SHAPE_IOU",
    "Obj",
    "Scene",
    "parse_caption",
    "all_captions",
    "all_scenes",
    "split_captions",
    "caption_split",
    "sample_scenes",
    "render",
    "render_batch",
    "detect_objects",
    "oracle",
    "oracle_score",
    "oracle_batch",
    "oracle_score_batch",
    "hard_negative",
    "corrupt_caption",
]

# --------------------------------------------------------------------------- #
# Vocabulary
# --------------------------------------------------------------------------- #

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (235, 225, 30),
    "green": (30, 180, 40),
    "blue": (30, 70, 230),
    "purple": (150, 40, 210),
    "white": (235, 235, 235),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
PLURALS: dict[str, str] = {"circle": "circles", "square": "squares", "triangle": "triangles"}
POSITIONS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right", "center")
CATEGORIES: tuple[str, ...] = ("single", "single_pos", "two_obj", "counting", "two_pos")

#: (colour, shape) pairs that never occur in the ``train`` split.
HELDOUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("red", "triangle"),
    ("yellow", "circle"),
    ("green", "square"),
    ("purple", "circle"),
)

_ARTICLES = ("a", "an")
_POS_WORDS = ("top", "bottom", "left", "right", "center")
_FUNCTION_WORDS = ("a", "an", "and", "at", "the", "two")

#: Every word that can appear in a caption, sorted (no special tokens).
VOCAB: list[str] = sorted(
    set(COLORS) | set(SHAPES) | set(PLURALS.values()) | set(_POS_WORDS) | set(_FUNCTION_WORDS)
)
_VOCAB_SET = frozenset(VOCAB)

# Renderer / oracle constants (fractions of the image size unless noted).
SUPERSAMPLE = 4
HALF_SIZE_RANGE = (0.13, 0.19)
POSITION_JITTER = 0.07
COLOR_JITTER = 12
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

_ANCHORS: dict[str, tuple[float, float]] = {  # (x, y) as fractions of width / height
    "top left": (0.25, 0.25),
    "top right": (0.75, 0.25),
    "bottom left": (0.25, 0.75),
    "bottom right": (0.75, 0.75),
    "center": (0.5, 0.5),
}


# --------------------------------------------------------------------------- #
# Scenes and captions
# --------------------------------------------------------------------------- #


def _article(color: str) -> str:
    return "an" if color[0] in "aeiou" else "a"


@dataclass(frozen=True)
class Obj:
    """One object: colour, shape and (optionally) a position."""

    color: str
    shape: str
    position: str | None = None

    def __post_init__(self) -> None:
        if self.color not in COLORS:
            raise ValueError(f"unknown colour {self.color!r}; expected one of {list(COLORS)}")
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; expected one of {list(SHAPES)}")
        if self.position is not None and self.position not in POSITIONS:
            raise ValueError(f"unknown position {self.position!r}; expected one of {list(POSITIONS)}")

    @property
    def phrase(self) -> str:
        """``a red circle`` or ``a red circle at the top left``."""
        s = f"{_article(self.color)} {self.color} {self.shape}"
        if self.position is not None:
            s += f" at the {self.position}"
        return s

    def without_position(self) -> "Obj":
        return Obj(self.color, self.shape)


@dataclass(frozen=True)
class Scene:
    """What a caption asks for: a tuple of objects plus the caption category.

    ``counting`` scenes hold the object twice (``two red circles`` ->
    ``(Obj('red','circle'), Obj('red','circle'))``).
    """

    objects: tuple[Obj, ...]
    category: str

    def __post_init__(self) -> None:
        objs = tuple(self.objects)
        object.__setattr__(self, "objects", objs)
        cat = self.category
        if cat not in CATEGORIES:
            raise ValueError(f"unknown category {cat!r}; expected one of {list(CATEGORIES)}")
        if not all(isinstance(o, Obj) for o in objs):
            raise TypeError("Scene.objects must be a tuple of Obj")
        n_expected = 1 if cat in ("single", "single_pos") else 2
        if len(objs) != n_expected:
            raise ValueError(f"category {cat!r} needs {n_expected} object(s), got {len(objs)}")
        positioned = cat in ("single_pos", "two_pos")
        for o in objs:
            if positioned and o.position is None:
                raise ValueError(f"category {cat!r} needs a position for every object")
            if not positioned and o.position is not None:
                raise ValueError(f"category {cat!r} takes no positions")
        if cat == "two_obj" and objs[0] == objs[1]:
            raise ValueError("two_obj objects must differ in colour or shape (use 'counting')")
        if cat == "counting" and objs[0] != objs[1]:
            raise ValueError("counting objects must be identical")
        if cat == "two_pos" and objs[0].position == objs[1].position:
            raise ValueError("two_pos objects must be at different positions")

    @property
    def caption(self) -> str:
        """The canonical caption text."""
        if self.category == "counting":
            o = self.objects[0]
            return f"two {o.color} {PLURALS[o.shape]}"
        return " and ".join(o.phrase for o in self.objects)

    @property
    def key(self) -> tuple[tuple[str, str, str], ...]:
        """Order-free semantic key ``((colour, shape, position or ""), ...)``: two
        scenes with equal keys ask for the same thing."""
        return tuple(sorted((o.color, o.shape, o.position or "") for o in self.objects))

    @property
    def pairs(self) -> tuple[tuple[str, str], ...]:
        """The (colour, shape) pairs used by the scene's objects."""
        return tuple((o.color, o.shape) for o in self.objects)

    def __str__(self) -> str:  # pragma: no cover - cosmetic
        return self.caption


def _as_scene(caption: str | Scene) -> Scene:
    if isinstance(caption, Scene):
        return caption
    if isinstance(caption, str):
        return parse_caption(caption)
    raise TypeError(f"expected a caption string or a Scene, got {type(caption).__name__}")


def _try_scene(objects: Sequence[Obj], category: str) -> Scene | None:
    try:
        return Scene(tuple(objects), category)
    except ValueError:
        return None


def parse_caption(caption: str) -> Scene:
    """Parse a caption of the toy grammar into a :class:`Scene`.

    Inverse of :attr:`Scene.caption`.  Case and surrounding / repeated
    whitespace are ignored; ``a`` and ``an`` are interchangeable.  Raises
    :class:`ValueError` with a message naming the problem (unknown words,
    unexpected word, invalid combination) for anything outside the grammar.
    """
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a str, got {type(caption).__name__}")
    toks = caption.strip().lower().split()
    if not toks:
        raise ValueError("empty caption")
    unknown = [t for t in toks if t not in _VOCAB_SET]
    if unknown:
        words = ", ".join(repr(w) for w in dict.fromkeys(unknown))
        raise ValueError(f"unknown word(s) {words} in caption {caption!r}")

    def fail(msg: str) -> ValueError:
        return ValueError(f"cannot parse caption {caption!r}: {msg}")

    if toks[0] == "two":
        if len(toks) != 3:
            raise fail("a counting caption is 'two <colour> <plural shape>'")
        color, plural = toks[1], toks[2]
        if color not in COLORS:
            raise fail(f"expected a colour after 'two', got {color!r}")
        singular = {v: k for k, v in PLURALS.items()}
        if plural not in singular:
            raise fail(f"expected a plural shape after the colour, got {plural!r}")
        o = Obj(color, singular[plural])
        return Scene((o, o), "counting")

    i = 0
    objs: list[Obj] = []

    def expect(cond: bool, what: str) -> None:
        if not cond:
            got = repr(toks[i]) if i < len(toks) else "end of caption"
            raise fail(f"expected {what} at word {i + 1}, got {got}")

    while True:
        expect(i < len(toks) and toks[i] in _ARTICLES, "'a'/'an'")
        i += 1
        expect(i < len(toks) and toks[i] in COLORS, "a colour")
        color = toks[i]
        i += 1
        expect(i < len(toks) and toks[i] in SHAPES, "a singular shape")
        shape = toks[i]
        i += 1
        position = None
        if i < len(toks) and toks[i] == "at":
            i += 1
            expect(i < len(toks) and toks[i] == "the", "'the'")
            i += 1
            expect(i < len(toks) and toks[i] in ("top", "bottom", "center"), "'top', 'bottom' or 'center'")
            if toks[i] == "center":
                position = "center"
                i += 1
            else:
                vert = toks[i]
                i += 1
                expect(i < len(toks) and toks[i] in ("left", "right"), "'left' or 'right'")
                position = f"{vert} {toks[i]}"
                i += 1
        objs.append(Obj(color, shape, position))
        if i == len(toks):
            break
        expect(toks[i] == "and" and len(objs) == 1, "end of caption" if len(objs) > 1 else "'and' or 'at'")
        i += 1

    has_pos = [o.position is not None for o in objs]
    if len(objs) == 1:
        category = "single_pos" if has_pos[0] else "single"
    elif all(has_pos):
        category = "two_pos"
    elif not any(has_pos):
        category = "two_obj"
    else:
        raise fail("either both objects or neither must have a position")
    try:
        return Scene(tuple(objs), category)
    except ValueError as e:
        raise fail(str(e)) from None


@functools.lru_cache(maxsize=None)
def _scenes_by_category() -> dict[str, tuple[Scene, ...]]:
    pairs = [(c, s) for c in COLORS for s in SHAPES]
    out: dict[str, list[Scene]] = {c: [] for c in CATEGORIES}
    for c, s in pairs:
        out["single"].append(Scene((Obj(c, s),), "single"))
        out["counting"].append(Scene((Obj(c, s), Obj(c, s)), "counting"))
        for p in POSITIONS:
            out["single_pos"].append(Scene((Obj(c, s, p),), "single_pos"))
    for a, b in itertools.permutations(pairs, 2):
        out["two_obj"].append(Scene((Obj(*a), Obj(*b)), "two_obj"))
    for a, b in itertools.product(pairs, repeat=2):
        for pa, pb in itertools.permutations(POSITIONS, 2):
            out["two_pos"].append(Scene((Obj(*a, pa), Obj(*b, pb)), "two_pos"))
    return {k: tuple(sorted(v, key=lambda sc: sc.caption)) for k, v in out.items()}


def _check_category(category: str | None) -> None:
    if category is not None and category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; expected one of {list(CATEGORIES)}")


def _check_split(split: str) -> None:
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'heldout'")


def all_scenes(category: str | None = None) -> list[Scene]:
    """All scenes of a category (or of every category), sorted by caption."""
    _check_category(category)
    d = _scenes_by_category()
    if category is not None:
        return list(d[category])
    return sorted((sc for c in CATEGORIES for sc in d[c]), key=lambda sc: sc.caption)


def all_captions(category: str | None = None) -> list[str]:
    """Deterministic, sorted enumeration of the whole caption space (or one category's)."""
    return [sc.caption for sc in all_scenes(category)]


def caption_split(caption: str | Scene) -> str:
    """``"heldout"`` if any object uses a pair of :data:`HELDOUT_PAIRS`, else ``"train"``."""
    scene = _as_scene(caption)
    return "heldout" if any(p in HELDOUT_PAIRS for p in scene.pairs) else "train"


@functools.lru_cache(maxsize=None)
def _split_scenes(split: str, category: str) -> tuple[Scene, ...]:
    scenes = _scenes_by_category()[category]
    if split == "all":
        return scenes
    return tuple(sc for sc in scenes if caption_split(sc) == split)


def split_captions(split: str, category: str | None = None) -> list[str]:
    """Captions of the structural ``"train"`` / ``"heldout"`` split (sorted).

    A caption is held out iff any of its objects uses a (colour, shape) pair in
    :data:`HELDOUT_PAIRS` (4 of the 21 pairs; every colour and shape still
    appears in train).  Counts per category (train / heldout): single 17/4,
    single_pos 85/20, two_obj 272/148, counting 17/4, two_pos 5780/3040;
    total 6171/3216.  The two splits are disjoint and their union is
    :func:`all_captions`.
    """
    _check_split(split)
    _check_category(category)
    cats = CATEGORIES if category is None else (category,)
    return sorted(sc.caption for c in cats for sc in _split_scenes(split, c))


def sample_scenes(
    rng: np.random.Generator,
    n: int,
    split: str = "train",
    categories: Iterable[str] | None = None,
) -> list[Scene]:
    """Sample ``n`` scenes: a category uniformly from ``categories`` (default: all),
    then a caption uniformly within that category of ``split``
    (``"train"``, ``"heldout"`` or ``"all"``)."""
    _check_split(split)
    cats = tuple(CATEGORIES if categories is None else categories)
    if not cats:
        raise ValueError("categories must not be empty")
    for c in cats:
        _check_category(c)
    pools = [_split_scenes(split, c) for c in cats]
    ci = rng.integers(0, len(cats), size=n)
    out = []
    for k in ci:
        pool = pools[int(k)]
        out.append(pool[int(rng.integers(0, len(pool)))])
    return out


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


# --------------------------------------------------------------------------- #
# Hard negatives
# --------------------------------------------------------------------------- #


def _edits(scene: Scene) -> list[tuple[str, Scene]]:
    """All minimal edits ``(kind, scene)`` of a scene that are valid scenes (may include no-ops)."""
    objs = list(scene.objects)
    cat = scene.category
    out: list[tuple[str, Scene | None]] = []
    if cat == "counting":
        o = objs[0]
        out += [("color", _try_scene((Obj(c, o.shape),) * 2, cat)) for c in COLORS if c != o.color]
        out += [("shape", _try_scene((Obj(o.color, s),) * 2, cat)) for s in SHAPES if s != o.shape]
        out.append(("count", _try_scene((o,), "single")))  # count 2 -> 1
        return [(k, s) for k, s in out if s is not None]
    if cat == "single":
        out.append(("count", _try_scene((objs[0], objs[0]), "counting")))  # count 1 -> 2

    def edited(i: int, o: Obj) -> Scene | None:
        new = objs.copy()
        new[i] = o
        s = _try_scene(new, cat)
        if s is None and cat == "two_obj":  # objects became identical -> "two <colour> <shape>s"
            s = _try_scene((o, o), "counting")
        return s

    for i, o in enumerate(objs):
        out += [("color", edited(i, Obj(c, o.shape, o.position))) for c in COLORS if c != o.color]
        out += [("shape", edited(i, Obj(o.color, sh, o.position))) for sh in SHAPES if sh != o.shape]
        if o.position is not None:
            out += [("position", edited(i, Obj(o.color, o.shape, p))) for p in POSITIONS if p != o.position]
    if len(objs) == 2:
        a, b = objs
        out.append(("swap", _try_scene((Obj(b.color, a.shape, a.position), Obj(a.color, b.shape, b.position)), cat)))
        out.append(("swap", _try_scene((Obj(a.color, b.shape, a.position), Obj(b.color, a.shape, b.position)), cat)))
        if a.position is not None:
            out.append(
                ("swap", _try_scene((Obj(a.color, a.shape, b.position), Obj(b.color, b.shape, a.position)), cat))
            )
    return [(k, s) for k, s in out if s is not None]


def hard_negative(scene: Scene | str, rng: np.random.Generator, split: str | None = None) -> Scene:
    """A minimal edit that makes the caption false for ``scene``.

    Edit kinds: change one object's ``color``, ``shape`` or ``position``;
    change the ``count`` (single <-> counting); ``swap`` colours, shapes or
    positions between the two objects of a two-object scene.  Edits that leave
    the scene semantically unchanged (same :attr:`Scene.key`, e.g. swapping the
    colours of two red objects) are excluded.  An available kind is chosen
    uniformly, then a distinct resulting caption uniformly within it.  With
    ``split`` (``"train"``/``"heldout"``) only negatives whose caption lies in
    that split are used (pass ``split="train"`` when making noisy *training*
    captions so held-out pairs do not leak).  Raises ``ValueError`` if no
    negative exists.
    """
    scene = _as_scene(scene)
    if split is not None:
        _check_split(split)
    by_kind: dict[str, dict[str, Scene]] = {}
    for kind, s in _edits(scene):
        if s.key == scene.key:
            continue
        if split is not None and split != "all" and caption_split(s) != split:
            continue
        by_kind.setdefault(kind, {})[s.caption] = s
    if not by_kind:
        raise ValueError(f"no hard negative for {scene.caption!r} (split={split!r})")
    kinds = sorted(by_kind)
    cands = by_kind[kinds[int(rng.integers(0, len(kinds)))]]
    keys = sorted(cands)
    return cands[keys[int(rng.integers(0, len(keys)))]]


def corrupt_caption(scene: Scene | str, rng: np.random.Generator, split: str | None = None) -> Scene:
    """A wrong caption for ``scene`` (for noisy training captions); same as :func:`hard_negative`."""
    return hard_negative(scene, rng, split=split)
