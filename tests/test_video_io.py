"""Video decoding (decord / PyAV agree), frame samplers (documented indices), writing mp4 / gif, clear errors."""

import math

import pytest
import torch

from rewardflow.io.video import (VideoReadError, available_backends, fps_indices, load_video, mjvideo_indices,
                                 save_video, tsn_indices, uniform_indices, video_info)

HAS_DECORD = "decord" in available_backends()


def _clip(T=12, H=48, W=64):
    """A moving bright block over a gradient: distinct frames, smooth enough for lossy codecs."""
    v = torch.zeros(T, 3, H, W)
    ys = torch.linspace(0, 1, H).view(H, 1)
    xs = torch.linspace(0, 1, W).view(1, W)
    for t in range(T):
        v[t, 0] = 0.2 + 0.5 * xs
        v[t, 1] = 0.2 + 0.5 * ys
        v[t, 2] = t / T
        v[t, :, 8:24, 3 * t: 3 * t + 16] = 0.95
    return v


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("vid")
    v = _clip()
    return {"video": v, "mp4": save_video(v, d / "a.mp4", fps=8), "gif": save_video(v, d / "a.gif", fps=8),
            "lossless": save_video(v, d / "b.mp4", fps=8, crf=0, pix_fmt="yuv444p"), "dir": d}


def test_mp4_roundtrip_pyav(files):
    v, info = load_video(files["mp4"], backend="pyav", return_info=True)
    assert v.shape == (12, 3, 48, 64) and v.dtype == torch.float32 and 0 <= v.min() and v.max() <= 1
    assert (info.num_frames, info.fps, info.height, info.width) == (12, 8.0, 48, 64)
    assert (v - files["video"]).abs().mean() < 0.02  # lossy yuv420p, CRF 18
    lossless = load_video(files["lossless"], backend="pyav")
    assert (lossless - files["video"]).abs().max() < 3 / 255  # only the RGB <-> YUV rounding


def test_gif_roundtrip(files):
    v = load_video(files["gif"])
    assert v.shape == (12, 3, 48, 64)
    assert (v - files["video"]).abs().mean() < 0.01
    assert video_info(files["gif"]).num_frames == 12


def test_webm_decodes(files):
    import av

    p = files["dir"] / "a.webm"
    with av.open(str(p), "w") as c:
        st = c.add_stream("libvpx-vp9", rate=8)
        st.width, st.height, st.pix_fmt = 64, 48, "yuv420p"
        for f in (files["video"] * 255).round().byte().permute(0, 2, 3, 1).numpy():
            for pkt in st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(pkt)
        for pkt in st.encode():
            c.mux(pkt)
    v = load_video(p, backend="pyav")
    assert v.shape == (12, 3, 48, 64) and (v - files["video"]).abs().mean() < 0.05
    if HAS_DECORD:
        torch.testing.assert_close(load_video(p, backend="decord"), v, atol=0, rtol=0)


@pytest.mark.skipif(not HAS_DECORD, reason="decord is not installed (pip install decord2)")
def test_decord_and_pyav_give_the_same_frames(files):
    for key in ("mp4", "lossless"):
        a = load_video(files[key], backend="pyav")
        b, info = load_video(files[key], backend="decord", return_info=True)
        assert info.backend == "decord"
        torch.testing.assert_close(a, b, atol=0, rtol=0)
        idx = [0, 5, 11, 5]
        torch.testing.assert_close(load_video(files[key], idx, backend="decord"), a[idx], atol=0, rtol=0)
        assert video_info(files[key], "decord").num_frames == video_info(files[key], "pyav").num_frames == 12


@pytest.mark.skipif(not HAS_DECORD, reason="decord is not installed (pip install decord2)")
def test_decord_stride_bug_falls_back_to_pyav(tmp_path):
    # decord returns padded rows for some widths (48 px here); the loader detects it and decodes with PyAV
    p = save_video(_clip(6, 32, 48), tmp_path / "w48.mp4")
    with pytest.warns(RuntimeWarning, match="decoding it with PyAV"):
        v = load_video(p, backend="decord")
    torch.testing.assert_close(v, load_video(p, backend="pyav"), atol=0, rtol=0)


def test_samplers_documented_indices():
    assert uniform_indices(10, 4).tolist() == [0, 3, 6, 9]
    assert uniform_indices(8, 4).tolist() == [0, 2, 5, 7]  # round(0, 2.33, 4.67, 7)
    # fps: 48 frames at 24 fps = 2 s -> 2 fps gives 4 frames
    assert fps_indices(48, 24.0, 2.0).tolist() == uniform_indices(48, 4).tolist()
    # 240 frames at 24 fps = 10 s -> 20 frames
    assert len(fps_indices(240, 24.0)) == 20
    # short clip: clamped up to the minimum 4 frames; 5 frames at 2 fps would be 2 -> 4
    assert fps_indices(8, 8.0).tolist() == [0, 2, 5, 7]
    # odd counts round to a multiple of 2: 30 frames at 10 fps at 2.5 fps = 7.5 -> 8
    assert len(fps_indices(30, 10.0, 2.5)) == 8
    # fewer frames than the minimum: the upper clamp floor_2(min(768, total)) wins (Qwen-VL order of the clamps)
    assert fps_indices(3, 8.0).tolist() == [0, 2]
    with pytest.raises(ValueError, match="too short"):
        fps_indices(1, 8.0)
    # TSN: segment s spans [floor(s F / S), floor((s + 1) F / S))
    assert tsn_indices(16, 4, random=False).tolist() == [0, 4, 8, 12]
    assert tsn_indices(10, 3, random=False).tolist() == [0, 3, 6]
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        idx = tsn_indices(10, 3, generator=g).tolist()
        assert 0 <= idx[0] < 3 and 3 <= idx[1] < 6 and 6 <= idx[2] < 10
    assert tsn_indices(16, 4, generator=torch.Generator().manual_seed(5)).tolist() == \
        tsn_indices(16, 4, generator=torch.Generator().manual_seed(5)).tolist()
    with pytest.raises(ValueError, match="segments"):
        tsn_indices(3, 4)
    # MJ-VIDEO get_index: int(linspace(0, F - 1, 8, endpoint=False))
    assert mjvideo_indices(16, 8).tolist() == [math.floor(15 * i / 8) for i in range(8)]


def test_load_with_sampler_and_indices(files):
    a = load_video(files["mp4"], backend="pyav")
    v = load_video(files["mp4"], lambda n, fps: fps_indices(n, fps, 2.0), backend="pyav")
    torch.testing.assert_close(v, a[uniform_indices(12, 4)])
    with pytest.raises(VideoReadError, match=r"a\.mp4.*frame 40"):
        load_video(files["mp4"], [0, 40], backend="pyav")


@pytest.mark.parametrize("backend", available_backends())
def test_corrupt_and_truncated_files_name_the_file(files, tmp_path, backend):
    data = files["mp4"].read_bytes()
    trunc = tmp_path / "truncated.mp4"
    trunc.write_bytes(data[: len(data) // 2])
    junk = tmp_path / "junk.webm"
    junk.write_bytes(b"not a video" * 50)
    for p in (trunc, junk):
        with pytest.raises(VideoReadError, match=p.name):
            load_video(p, backend=backend)
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        load_video(tmp_path / "missing.mp4", backend=backend)


def test_save_video_errors(tmp_path):
    with pytest.raises(ValueError, match=r"\[T, 3, H, W\]"):
        save_video(torch.rand(3, 8, 8), tmp_path / "x.mp4")
    with pytest.raises(ValueError, match="even height and width"):
        save_video(torch.rand(2, 3, 9, 8), tmp_path / "x.mp4")
    with pytest.raises(ValueError, match="unsupported extension"):
        save_video(torch.rand(2, 3, 8, 8), tmp_path / "x.avi")
    with pytest.raises(ValueError, match="unknown video backend"):
        load_video(save_video(torch.rand(2, 3, 8, 8), tmp_path / "x.gif"), backend="opencv")
