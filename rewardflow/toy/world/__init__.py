"""A toy compositional world: GenEval in miniature.

Small (default 32x32) images of coloured geometric objects on a black
background, a closed caption grammar that describes them, a deterministic
renderer and a strict, GenEval-style *oracle* that decides whether an image
satisfies a caption.  It is meant as a cheap, exactly-verifiable stand-in for
text-to-image alignment experiments (rewards, held-out compositional
generalisation, noisy captions) that runs in milliseconds on a CPU.

The world is split by concern; this package exposes all of it, so ``from rewardflow.toy import world`` and
``world.render_batch(...)``, ``world.oracle_score_batch(...)`` etc. work as one module:

``grammar.py``    vocabulary, :class:`Obj` / :class:`Scene`, :func:`parse_caption`, the caption space and its
                  structural train / held-out split
``renderer.py``   :func:`render` / :func:`render_batch` (PIL, supersampled)
``oracles.py``    :func:`detect_objects` and the strict / partial-credit oracles
``negatives.py``  :func:`hard_negative` / :func:`corrupt_caption` (minimal false edits of a caption)

The world and its numbers are described in docs/toy-world.md.
"""

from __future__ import annotations

from rewardflow.toy.world.grammar import (
    CATEGORIES,
    COLORS,
    HELDOUT_PAIRS,
    PLURALS,
    POSITIONS,
    SHAPES,
    VOCAB,
    Obj,
    Scene,
    all_captions,
    all_scenes,
    caption_split,
    parse_caption,
    sample_scenes,
    split_captions,
)
from rewardflow.toy.world.negatives import corrupt_caption, hard_negative
from rewardflow.toy.world.oracles import (
    ALPHA_MIN,
    CENTER_TOL,
    MAX_ASPECT,
    MIN_AREA_FRAC,
    MIN_SHAPE_IOU,
    RESIDUAL_MAX,
    detect_objects,
    oracle,
    oracle_batch,
    oracle_score,
    oracle_score_batch,
)
from rewardflow.toy.world.renderer import (
    COLOR_JITTER,
    HALF_SIZE_RANGE,
    POSITION_JITTER,
    SUPERSAMPLE,
    render,
    render_batch,
)

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
    # renderer / oracle constants (fractions of the image size unless noted)
    "SUPERSAMPLE",
    "HALF_SIZE_RANGE",
    "POSITION_JITTER",
    "COLOR_JITTER",
    "CENTER_TOL",
    "MIN_AREA_FRAC",
    "ALPHA_MIN",
    "RESIDUAL_MAX",
    "MAX_ASPECT",
]
