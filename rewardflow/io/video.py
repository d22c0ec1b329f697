"""Video files <-> tensors, and frame samplers.

Decoding
--------
:func:`load_video` reads mp4 / webm / gif (anything FFmpeg reads) into a ``[T, 3, H, W]`` float32 RGB tensor in
[0, 1]. Two backends give the same frames (both run FFmpeg's decoder and its ``rgb24`` conversion):

* ``"decord"`` (``pip install decord2``, imported as ``decord``): random access with ``VideoReader.get_batch``; the
  reader used by the official VideoAlign (``vision_process.py``) and MJ-VIDEO (``data.py``) code.
* ``"pyav"`` (``av``, always installed): sequential decode, keeping the requested frames.

``backend=None`` picks decord when it is importable, PyAV otherwise. A missing file raises ``FileNotFoundError``; a
corrupt or truncated file, or a frame index past the frames that could be decoded, raises :class:`VideoReadError`
naming the file. (decord has no GIF demuxer in some builds; a GIF falls back to PyAV when decord cannot open it.)

Frame samplers (indices into the ``total`` decoded frames, sorted, ``LongTensor``)
-------------------------------------------------------------------------------
* :func:`uniform_indices` ``(total, n)``: ``round(linspace(0, total - 1, n))`` -- Qwen-VL ``vision_process.py``
  ``sample_type="uniform"`` (VideoAlign).
* :func:`fps_indices` ``(total, video_fps, fps=2)``: Qwen-VL ``smart_nframes``: ``n = total / video_fps * fps``
  clamped to ``[ceil_2(4), floor_2(min(768, total))]`` and rounded to a multiple of 2, then :func:`uniform_indices`.
* :func:`tsn_indices` ``(total, segments, random=True)``: TSN sparse sampling (InstructVideo SegVR, VGen
  ``utils/reward/reward.py``): segment ``s`` spans frames ``[floor(s * total / S), floor((s + 1) * total / S))``;
  one frame per segment, uniformly at random inside it (``random=True``, the ``TSN`` selection) or the segment's
  first frame (``random=False``, ``fixed_first``; for ``total`` divisible by ``S`` that is ``s * total // S``).
* :func:`mjvideo_indices` ``(total, n=8)``: MJ-VIDEO ``get_index``: ``linspace(0, total - 1, n, endpoint=False)``
  truncated to int (the first frames of ``n`` equal spans).

Writing
-------
:func:`save_video` writes ``[T, 3, H, W]`` floats in [0, 1] as ``.mp4`` (PyAV, libx264, yuv420p, CRF 18 by default;
``crf=0`` with ``pix_fmt="yuv444p"`` is near-lossless) or ``.gif`` (PIL, adaptive palette, looping; PIL merges
identical consecutive frames into one with the summed duration, so playback timing is kept but a reader may get
fewer frames -- use mp4 when the frame count matters). Frames are
quantized with :func:`rewardflow.io.images.to_uint8` (the one quantization step of the code base).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from rewardflow.io.images import to_uint8

VIDEO_EXTENSIONS = (".mp4", ".webm", ".gif", ".mov", ".mkv", ".avi")
BACKENDS = ("decord", "pyav")

# Qwen-VL vision_process.py constants (VideoAlign fork): fps-based sampling.
FRAME_FACTOR = 2
FPS = 2.0
FPS_MIN_FRAMES = 4
FPS_MAX_FRAMES = 768

__all__ = [
    "VIDEO_EXTENSIONS",
    "BACKENDS",
    "VideoReadError",
    "VideoInfo",
    "available_backends",
    "default_backend",
    "video_info",
    "load_video",
    "save_video",
    "uniform_indices",
    "fps_indices",
    "tsn_indices",
    "mjvideo_indices",
]


class VideoReadError(ValueError):
    """A video file could not be decoded (corrupt, truncated, or not a video)."""


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    height: int
    width: int
    backend: str


# --------------------------------------------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------------------------------------------


def _check_total(total: int, fn: str) -> None:
    if int(total) < 1:
        raise ValueError(f"{fn}: the video has no frames (total={total})")


def uniform_indices(total: int, n: int) -> torch.Tensor:
    """``n`` indices spread evenly over ``[0, total - 1]``: ``round(linspace(0, total - 1, n))``."""
    _check_total(total, "uniform_indices")
    if n < 1:
        raise ValueError(f"uniform_indices: n must be >= 1, got {n}")
    return torch.linspace(0, total - 1, n).round().long()


def _round_by(x: float, f: int) -> int:
    return round(x / f) * f


def fps_indices(total: int, video_fps: float, fps: float = FPS, min_frames: int = FPS_MIN_FRAMES,
                max_frames: int = FPS_MAX_FRAMES) -> torch.Tensor:
    """Frames at ``fps`` per second, as Qwen-VL ``smart_nframes`` + uniform sampling (see the module docstring)."""
    _check_total(total, "fps_indices")
    if video_fps <= 0 or fps <= 0:
        raise ValueError(f"fps_indices: fps must be positive, got video_fps={video_fps}, fps={fps}")
    lo = math.ceil(min_frames / FRAME_FACTOR) * FRAME_FACTOR
    hi = math.floor(min(max_frames, total) / FRAME_FACTOR) * FRAME_FACTOR
    n = _round_by(min(max(total / video_fps * fps, lo), hi), FRAME_FACTOR)
    if not FRAME_FACTOR <= n <= total:
        raise ValueError(f"fps_indices: a {total}-frame video is too short for fps sampling (needs >= "
                         f"{max(lo, FRAME_FACTOR)} frames, would take {n}); use uniform_indices instead")
    return uniform_indices(total, n)


def tsn_indices(total: int, segments: int, random: bool = True,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """One frame per segment of ``segments`` equal spans (TSN); random inside the span or its first frame."""
    _check_total(total, "tsn_indices")
    if not 1 <= segments <= total:
        raise ValueError(f"tsn_indices: need 1 <= segments <= frames, got segments={segments}, frames={total}")
    edges = [(s * total) // segments for s in range(segments + 1)]
    starts = torch.tensor(edges[:-1])
    if not random:
        return starts
    spans = torch.tensor(edges[1:]) - starts
    u = torch.rand(segments, generator=generator)
    return starts + (u * spans).long().clamp(max=spans - 1)


def mjvideo_indices(total: int, n: int = 8) -> torch.Tensor:
    """MJ-VIDEO ``get_index``: ``int(linspace(0, total - 1, n, endpoint=False))``."""
    _check_total(total, "mjvideo_indices")
    return torch.from_numpy(np.linspace(0, total - 1, n, endpoint=False).astype(np.int64))


# --------------------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------------------


def _import_av():
    try:
        import av  # lazy: optional dependency (rewardflow[video])
    except ImportError:
        raise ImportError("reading/writing video needs PyAV: pip install 'rewardflow[video]' (or pip install av)") \
            from None
    return av


def available_backends() -> list[str]:
    out = []
    try:
        import decord  # noqa: F401  (lazy: optional dependency, rewardflow[video])

        out.append("decord")
    except ImportError:
        pass
    out.append("pyav")
    return out


def default_backend() -> str:
    return available_backends()[0]


def _resolve(path, backend):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    backend = backend or default_backend()
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; expected one of {BACKENDS}")
    if backend == "decord" and "decord" not in available_backends():
        raise ImportError("the decord backend needs `pip install decord2` (or use backend='pyav')")
    return path, backend


def _decord_reader(path: Path):
    import decord  # lazy: optional dependency (rewardflow[video])

    try:
        return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    except Exception as e:  # decord raises DECORDError / RuntimeError on bad data
        raise VideoReadError(f"cannot decode video {path}: {e}") from e


def _pyav_frames(path: Path, keep: set[int] | None):
    """Decode sequentially; returns (frames {index: HxWx3 uint8}, decoded count, fps, (H, W))."""
    av = _import_av()

    frames: dict[int, np.ndarray] = {}
    n = 0
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise VideoReadError(f"cannot decode video {path}: no video stream")
            st = c.streams.video[0]
            fps = float(st.average_rate or st.guessed_rate or 0.0)
            hw = (st.codec_context.height, st.codec_context.width)
            last = max(keep) if keep else None
            for fr in c.decode(st):
                if keep is None or n in keep:
                    frames[n] = fr.to_ndarray(format="rgb24")
                n += 1
                if last is not None and n > last:
                    break
    except VideoReadError:
        raise
    except Exception as e:  # av.error.InvalidDataError, EOFError, ...
        raise VideoReadError(f"cannot decode video {path}: {e}") from e
    if n == 0:
        raise VideoReadError(f"cannot decode video {path}: no frame could be decoded (corrupt or truncated file)")
    return frames, n, fps, hw


def _decord_fallback(path: Path) -> None:
    # decord (0.6.0 and decord2 3.4.0) copies FFmpeg's padded rows for some frame widths (e.g. 48 px; decord2 also
    # 32 px) and then fails its size check or returns 4/6 "channels". Those files are decoded with PyAV instead.
    warnings.warn(f"decord could not return RGB frames for {path}; decoding it with PyAV", RuntimeWarning,
                  stacklevel=3)


def video_info(path: str | os.PathLike, backend: str | None = None) -> VideoInfo:
    """Frame count (decoded frames, not the container's claim), fps and size of a video file."""
    path, backend = _resolve(path, backend)
    if backend == "decord" and path.suffix.lower() != ".gif":
        vr = _decord_reader(path)
        h, w = vr[0].shape[:2]
        return VideoInfo(len(vr), float(vr.get_avg_fps()), int(h), int(w), "decord")
    _, n, fps, (h, w) = _pyav_frames(path, keep=set())
    return VideoInfo(n, fps, int(h), int(w), "pyav")


Sampler = Callable[[int, float], Sequence[int]]


def load_video(path: str | os.PathLike, frames: Sequence[int] | torch.Tensor | Sampler | None = None,
               backend: str | None = None, return_info: bool = False):
    """Decode a video file to ``[T, 3, H, W]`` float32 in [0, 1].

    ``frames``: ``None`` (all frames), a sequence of indices, or a sampler ``f(total, fps) -> indices`` such as
    ``lambda n, fps: fps_indices(n, fps, 2.0)``. With ``return_info=True`` returns ``(video, VideoInfo)``.
    """
    path, backend = _resolve(path, backend)
    if backend == "decord" and path.suffix.lower() == ".gif":
        backend = "pyav"  # decord builds without a GIF demuxer: same FFmpeg decode through PyAV
    if backend == "decord":
        vr = _decord_reader(path)
        total, fps = len(vr), float(vr.get_avg_fps())
    else:
        info = None
        total = fps = None
    if callable(frames):
        if backend == "pyav":
            info = video_info(path, "pyav")
            total, fps = info.num_frames, info.fps
        frames = frames(total, fps)
    idx = None if frames is None else [int(i) for i in (frames.tolist() if torch.is_tensor(frames) else frames)]
    if idx is not None and (not idx or min(idx) < 0):
        raise ValueError(f"load_video: frame indices must be non-negative and non-empty, got {idx}")
    if backend == "decord":
        want = list(range(total)) if idx is None else idx
        if max(want) >= total:
            raise VideoReadError(f"cannot decode video {path}: frame {max(want)} requested but it has {total}")
        try:
            arr = vr.get_batch(want).asnumpy()
        except Exception:  # decord's row-stride bug (see _decord_fallback) or bad data: let PyAV decide
            arr = None
        if arr is None or arr.ndim != 4 or arr.shape[-1] != 3:
            _decord_fallback(path)
            return load_video(path, want, backend="pyav", return_info=return_info)
        h, w = arr.shape[1:3]
    else:
        got, total, fps, _ = _pyav_frames(path, None if idx is None else set(idx))
        want = list(range(total)) if idx is None else idx
        missing = [i for i in want if i not in got]
        if missing:
            raise VideoReadError(f"cannot decode video {path}: frame {missing[0]} requested but only {total} "
                                 "frames could be decoded (truncated file?)")
        arr = np.stack([got[i] for i in want])
        h, w = arr.shape[1:3]
    video = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float().div_(255.0)
    if return_info:
        return video, VideoInfo(int(total), float(fps), int(h), int(w), backend)
    return video


# --------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------


def _check_video(video: torch.Tensor) -> np.ndarray:
    if not isinstance(video, torch.Tensor) or video.ndim != 4 or video.shape[1] != 3:
        shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
        raise ValueError(f"save_video: expected a video [T, 3, H, W] in [0, 1], got {shape}")
    return to_uint8(video).numpy()  # [T, H, W, 3]


def save_video(video: torch.Tensor, path: str | os.PathLike, fps: float = 8.0, crf: int = 18,
               pix_fmt: str = "yuv420p") -> Path:
    """Write ``[T, 3, H, W]`` in [0, 1] to ``.mp4`` (libx264) or ``.gif``; returns the path."""
    path = Path(path)
    frames = _check_video(video)
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = path.suffix.lower()
    if ext == ".gif":
        ims = [Image.fromarray(f) for f in frames]
        ims[0].save(path, save_all=True, append_images=ims[1:], duration=max(int(round(1000 / fps)), 10), loop=0,
                    optimize=False, disposal=1)
        return path
    if ext != ".mp4":
        raise ValueError(f"save_video: unsupported extension {ext!r} for {path} (use .mp4 or .gif)")
    h, w = frames.shape[1:3]
    if pix_fmt == "yuv420p" and (h % 2 or w % 2):
        raise ValueError(f"save_video: yuv420p mp4 needs even height and width, got {h}x{w} "
                         "(resize or crop the video, or pass pix_fmt='yuv444p')")
    av = _import_av()
    with av.open(str(path), mode="w") as c:
        st = c.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        st.width, st.height, st.pix_fmt = w, h, pix_fmt
        st.options = {"crf": str(crf)}
        for f in frames:
            for pkt in st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(pkt)
        for pkt in st.encode():
            c.mux(pkt)
    return path
