"""Hard negatives of the toy world: minimal caption edits that make a caption false for a scene (colour, shape,
position, count, swaps), used for contrastive reward training and noisy training captions."""

from __future__ import annotations

import numpy as np

from rewardflow.toy.world.grammar import (
    COLORS,
    POSITIONS,
    SHAPES,
    Obj,
    Scene,
    _as_scene,
    _check_split,
    _try_scene,
    caption_split,
)

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
