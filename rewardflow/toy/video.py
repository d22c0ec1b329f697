"""A toy video world: one coloured shape moving across a 32x32 frame, with an exact oracle.

Captions: ``<a|an> <colour> <shape> moving <left|right|up|down>`` (e.g. ``"a red circle moving left"``), colours
and shapes of the image world (:mod:`rewardflow.toy.world`): 7 x 3 x 4 = 84 captions (:func:`all_video_captions`).
The held-out (colour, shape) pairs of the image world stay held out (:func:`video_caption_split`).

Renderer (:func:`render_clip`): the object is drawn once by the image renderer (:func:`world.render` of the
``single_pos`` scene "... at the center": jittered size, position and colour), then translated by whole pixels
per frame with black fill: along the motion axis the offsets are ``round(linspace(-L/2, L/2, T))`` with a total
travel ``L ~ U{8..12}`` px in the caption's direction (``up`` = towards row 0), plus a constant perpendicular
offset ``U{-3..3}`` px. The object never leaves the frame (half-size <= 0.19 * 32, centre jitter <= 0.07 * 32), so
every frame is an exactly translated copy of the first.

Oracle (:func:`video_oracle`): content and motion.

* content: every frame has exactly one detected object (:func:`world.detect_objects`), of the caption's colour and
  shape;
* motion: the least-squares slope of the object's bounding-box centre over frame index, times ``T - 1``, gives the
  displacement ``(dx, dy)``; the direction is ``still`` if ``max(|dx|, |dy|) < MIN_MOTION_PX`` (3 px), else the
  dominant axis's direction when it is at least twice the other (``left``/``right``/``up``/``down``), else
  ``diagonal``. It must equal the caption's direction.

:func:`video_oracle_score` gives partial credit ``0.5 * (fraction of frames whose content matches) + 0.5 *
(direction correct)``; it is 1.0 exactly when :func:`video_oracle` passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rewardflow.toy import world

DIRECTIONS = ("left", "right", "up", "down")
_STEP = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}  # (dx, dy), y grows downwards
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
VIDEO_WORDS = ("moving", "up", "down")  # words beyond the image world's vocabulary
TRAVEL_RANGE = (8, 12)
PERP_OFFSET = 3
MIN_MOTION_PX = 3.0

__all__ = ["DIRECTIONS", "OPPOSITE", "VIDEO_VOCAB", "VideoCaption", "parse_video_caption", "all_video_captions",
           "video_caption_split", "render_clip", "render_clips", "clip_direction", "video_oracle",
           "video_oracle_score", "video_oracle_score_batch", "video_negatives"]

VIDEO_VOCAB: list[str] = sorted(set(world.VOCAB) | set(VIDEO_WORDS))


@dataclass(frozen=True)
class VideoCaption:
    """One moving object: its (colour, shape) and the direction of motion."""

    obj: world.Obj
    direction: str

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {self.direction!r}; expected one of {list(DIRECTIONS)}")

    @property
    def caption(self) -> str:
        return f"{world.Scene((self.obj,), 'single').caption} moving {self.direction}"


def parse_video_caption(caption: str | VideoCaption) -> VideoCaption:
    """Parse ``"a red circle moving left"``; anything else raises ``ValueError`` naming the problem."""
    if isinstance(caption, VideoCaption):
        return caption
    toks = caption.strip().lower().split()
    if len(toks) < 3 or toks[-2] != "moving":
        raise ValueError(f"cannot parse video caption {caption!r}: expected '<a|an> <colour> <shape> moving "
                         f"<{'|'.join(DIRECTIONS)}>'")
    if toks[-1] not in DIRECTIONS:
        raise ValueError(f"cannot parse video caption {caption!r}: unknown direction {toks[-1]!r}; expected one "
                         f"of {list(DIRECTIONS)}")
    scene = world.parse_caption(" ".join(toks[:-2]))
    if scene.category != "single":
        raise ValueError(f"cannot parse video caption {caption!r}: the object part must be one object without a "
                         "position, like 'a red circle'")
    return VideoCaption(scene.objects[0], toks[-1])


def all_video_captions() -> list[str]:
    """The 84 captions, sorted."""
    return sorted(VideoCaption(world.Obj(c, s), d).caption for c in world.COLORS for s in world.SHAPES
                  for d in DIRECTIONS)


def video_caption_split(caption: str | VideoCaption) -> str:
    """``"heldout"`` if the object is one of :data:`world.HELDOUT_PAIRS`, else ``"train"``."""
    vc = parse_video_caption(caption)
    return "heldout" if (vc.obj.color, vc.obj.shape) in world.HELDOUT_PAIRS else "train"


def _shift(img: np.ndarray, dx: int, dy: int) -> np.ndarray:
    out = np.zeros_like(img)
    H, W = img.shape[:2]
    ys, yd = (slice(0, H - dy), slice(dy, H)) if dy >= 0 else (slice(-dy, H), slice(0, H + dy))
    xs, xd = (slice(0, W - dx), slice(dx, W)) if dx >= 0 else (slice(-dx, W), slice(0, W + dx))
    out[yd, xd] = img[ys, xs]
    return out


def render_clip(caption: str | VideoCaption, frames: int = 8, size: int = 32,
                rng: np.random.Generator | None = None, still: bool = False) -> np.ndarray:
    """Render a caption to ``[frames, size, size, 3]`` uint8 (``still=True``: the same object, not moving)."""
    vc = parse_video_caption(caption)
    if frames < 2:
        raise ValueError(f"a clip needs at least 2 frames, got {frames}")
    rng = rng if rng is not None else np.random.default_rng()
    base = world.render(world.Scene((world.Obj(vc.obj.color, vc.obj.shape, "center"),), "single_pos"), size=size,
                        rng=rng)
    scale = size / 32.0
    travel = 0 if still else int(round(rng.integers(TRAVEL_RANGE[0], TRAVEL_RANGE[1] + 1) * scale))
    perp = int(round(rng.integers(-PERP_OFFSET, PERP_OFFSET + 1) * scale))
    along = np.round(np.linspace(-travel / 2, travel / 2, frames)).astype(int)
    sx, sy = _STEP[vc.direction]
    return np.stack([_shift(base, int(a * sx + perp * abs(sy)), int(a * sy + perp * abs(sx))) for a in along])


def render_clips(captions, frames: int = 8, size: int = 32, rng: np.random.Generator | None = None) -> torch.Tensor:
    """Render several captions to a float video batch ``[N, T, 3, H, W]`` in [0, 1]."""
    rng = rng if rng is not None else np.random.default_rng()
    clips = np.stack([render_clip(c, frames, size, rng) for c in captions])
    return torch.from_numpy(clips).permute(0, 1, 4, 2, 3).float() / 255.0


def _frames_hwc(video) -> list[np.ndarray]:
    if isinstance(video, torch.Tensor):
        video = video.detach().cpu().numpy()
    video = np.asarray(video)
    if video.ndim != 4:
        raise ValueError(f"expected one video [T, 3, H, W] or [T, H, W, 3], got shape {video.shape}")
    return [video[t] for t in range(video.shape[0])]


def _analyse(video, caption):
    vc = parse_video_caption(caption)
    frames = _frames_hwc(video)
    ok, centres = [], []
    for f in frames:
        dets = world.detect_objects(f)
        ok.append(len(dets) == 1 and dets[0]["color"] == vc.obj.color and dets[0]["shape"] == vc.obj.shape)
        centres.append(dets[0]["center"] if len(dets) == 1 else None)
    return vc, ok, centres


def _direction(centres) -> str:
    pts = [(t, c) for t, c in enumerate(centres) if c is not None]
    if len(pts) < 2:
        return "none"
    t = np.array([p[0] for p in pts], dtype=np.float64)
    xy = np.array([p[1] for p in pts], dtype=np.float64)
    tc = t - t.mean()
    slope = (tc[:, None] * (xy - xy.mean(0))).sum(0) / (tc**2).sum()
    dx, dy = slope * (len(centres) - 1)
    if max(abs(dx), abs(dy)) < MIN_MOTION_PX:
        return "still"
    if abs(dx) >= 2 * abs(dy):
        return "right" if dx > 0 else "left"
    if abs(dy) >= 2 * abs(dx):
        return "down" if dy > 0 else "up"
    return "diagonal"


def clip_direction(video) -> str:
    """Detected motion of the single object: a direction, ``still``, ``diagonal`` or ``none`` (no single object)."""
    frames = _frames_hwc(video)
    centres = []
    for f in frames:
        dets = world.detect_objects(f)
        centres.append(dets[0]["center"] if len(dets) == 1 else None)
    return _direction(centres)


def video_oracle(video, caption: str | VideoCaption) -> bool:
    """Exact check: every frame shows exactly the caption's object, and it moves in the caption's direction."""
    vc, ok, centres = _analyse(video, caption)
    return all(ok) and _direction(centres) == vc.direction


def video_oracle_score(video, caption: str | VideoCaption) -> float:
    """Partial credit ``0.5 * content fraction + 0.5 * direction correct`` (1.0 iff :func:`video_oracle`)."""
    vc, ok, centres = _analyse(video, caption)
    return 0.5 * float(np.mean(ok)) + 0.5 * float(_direction(centres) == vc.direction)


def video_oracle_score_batch(videos, captions) -> np.ndarray:
    """:func:`video_oracle_score` over ``[N, T, ...]`` videos and N captions -> float32 ``[N]``."""
    if len(videos) != len(captions):
        raise ValueError(f"got {len(videos)} videos but {len(captions)} captions")
    return np.array([video_oracle_score(v, c) for v, c in zip(videos, captions)], dtype=np.float32)


def video_negatives(caption: str | VideoCaption, rng: np.random.Generator, split: str | None = "train") -> dict:
    """False captions for a clip of ``caption``: ``direction`` (the three other directions) and ``content``
    (a colour or shape edit of the object, from :func:`world.hard_negative`, kept in ``split``)."""
    vc = parse_video_caption(caption)
    dirs = [VideoCaption(vc.obj, d).caption for d in DIRECTIONS if d != vc.direction]
    content = []
    for _ in range(8):
        s = world.hard_negative(world.Scene((vc.obj,), "single"), rng, split=split)
        if s.category == "single":
            content.append(VideoCaption(s.objects[0], vc.direction).caption)
    return {"direction": dirs, "content": list(dict.fromkeys(content))}
