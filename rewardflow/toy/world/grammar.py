"""The caption grammar of the toy world: vocabulary, scenes, caption parsing, the caption space and its splits.

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
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

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
