"""Property-based tests (hypothesis): config parsing and media loading. Small runs (max_examples ~25) so the default
suite stays fast; `--hypothesis-seed=N` reproduces a failure."""

from __future__ import annotations

import json
import string
from dataclasses import asdict, dataclass

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rewardflow.config import load_config

SMALL = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@dataclass
class Sample:
    """A config with every field type load_config supports."""

    iterations: int = 3
    learning_rate: float = 0.1
    run_name: str = "x"
    use_guidance: bool = False
    reward_names: tuple[str, ...] = ("toy_clip",)
    reward_weights: tuple[float, ...] = (1.0,)
    output_dir: str | None = None


FIELDS = list(asdict(Sample()))
text = st.text(st.characters(max_codepoint=0xFFFF, exclude_categories=("Cs", "Cc", "Zl", "Zp")), max_size=12)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
values = {
    "iterations": st.integers(-10**6, 10**6),
    "learning_rate": finite,
    "run_name": text,
    "use_guidance": st.booleans(),
    "reward_names": st.lists(text, max_size=3).map(tuple),
    "reward_weights": st.lists(finite, max_size=3).map(tuple),
    "output_dir": st.none() | text,
}
configs = st.fixed_dictionaries({}, optional=values)


def _same(a: Sample, want: dict) -> bool:
    got = asdict(a)
    return all(got[k] == v and type(got[k]) is type(v) or (isinstance(v, float) and got[k] == v)
               for k, v in want.items())


@SMALL
@given(cfg=configs)
def test_yaml_file_round_trips(tmp_path_factory, cfg):
    import yaml

    p = tmp_path_factory.mktemp("cfg") / "c.yaml"
    p.write_text(yaml.safe_dump({k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}))
    c = load_config(Sample, p)
    assert _same(c, cfg), (asdict(c), cfg)
    assert all(getattr(c, k) == v for k, v in asdict(Sample()).items() if k not in cfg)  # untouched defaults


def _is_plain_yaml_str(s: str) -> bool:
    import yaml

    try:
        return yaml.safe_load(s) == s
    except yaml.YAMLError:
        return False


@SMALL
@given(cfg=configs)
def test_overrides_round_trip(cfg):
    # an override is `key=<YAML scalar>`; JSON text is YAML, so json.dumps writes any value unambiguously
    c = load_config(Sample, None, [f"{k}={json.dumps(list(v) if isinstance(v, tuple) else v)}" for k, v in cfg.items()])
    assert _same(c, cfg), (asdict(c), cfg)


@SMALL
@given(name=st.text(string.ascii_letters + string.digits, min_size=1, max_size=12).filter(_is_plain_yaml_str))
def test_plain_string_override_needs_no_quotes(name):
    assert load_config(Sample, None, [f"run_name={name}"]).run_name == name


def test_numeric_looking_string_override_says_to_quote_it():
    with pytest.raises(ValueError, match=r"config key 'run_name' expects str, got int 123.*quote"):
        load_config(Sample, None, ["run_name=123"])
    assert load_config(Sample, None, ["run_name='123'"]).run_name == "123"


def _typo(key: str, data) -> str:
    """One edit (substitute / delete / insert / swap) of a valid key."""
    i = data.draw(st.integers(0, len(key) - 1))
    op = data.draw(st.sampled_from(["sub", "del", "ins", "swap"]))
    ch = data.draw(st.sampled_from(string.ascii_lowercase + "_"))
    if op == "sub":
        return key[:i] + ch + key[i + 1:]
    if op == "del":
        return key[:i] + key[i + 1:]
    if op == "ins":
        return key[:i] + ch + key[i:]
    j = min(i + 1, len(key) - 1)
    return key[:i] + key[j] + key[i] + key[j + 1:] if j > i else key


@SMALL
@given(data=st.data())
def test_a_mistyped_key_always_raises_with_a_suggestion(data):
    key = data.draw(st.sampled_from(FIELDS))
    bad = _typo(key, data)
    if bad in FIELDS:
        return
    with pytest.raises(ValueError) as e:
        load_config(Sample, None, [f"{bad}=1"])
    msg = str(e.value)
    assert f"unknown config key {bad!r}" in msg and "Did you mean '" in msg and "Valid keys: " + ", ".join(FIELDS) in msg


@SMALL
@given(bad=st.text(string.ascii_letters + "_", min_size=1, max_size=20))
def test_any_unknown_key_raises_listing_the_valid_keys(bad):
    if bad in FIELDS:
        return
    with pytest.raises(ValueError, match="Valid keys: " + ", ".join(FIELDS)):
        load_config(Sample, None, [f"{bad}=1"])


@SMALL
@given(data=st.data())
def test_trainer_config_typo_suggests_the_key(data):
    import dataclasses

    from rewardflow.align.methods.rwr import RWRConfig
    from rewardflow.align.trainer import TrainConfig, split_config

    keys = [f.name for f in dataclasses.fields(TrainConfig) if len(f.name) >= 5 and f.name != "method"]
    valid = {f.name for f in dataclasses.fields(TrainConfig)} | {f.name for f in dataclasses.fields(RWRConfig)}
    key = data.draw(st.sampled_from(keys))
    bad = _typo(key, data)
    if bad in valid:
        return
    with pytest.raises(ValueError, match=f"unknown config key {bad!r}. Did you mean '"):
        split_config({"method": "rwr", bad: 1})


# ------------------------------------------------------------------------------------------ media


def _arrays(channels):
    return st.tuples(st.integers(1, 24), st.integers(1, 24), st.integers(0, 2**32 - 1)).map(
        lambda t: np.random.default_rng(t[2]).integers(0, 256, (t[0], t[1], *channels), dtype=np.uint8))


@SMALL
@given(arr=_arrays((3,)) | _arrays(()) | _arrays((4,)))
def test_png_loads_back_exactly(tmp_path_factory, arr):
    from PIL import Image

    from rewardflow.io.images import load_image

    p = tmp_path_factory.mktemp("img") / "x.png"
    Image.fromarray(arr).save(p)
    x = load_image(p)
    h, w = arr.shape[:2]
    assert x.shape == (3, h, w) and x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) <= 1
    rgb = arr[..., :3] if arr.ndim == 3 else np.repeat(arr[..., None], 3, -1)  # alpha dropped, grey replicated
    assert torch.equal(x, torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)


@SMALL
@given(arr=_arrays((3,)) | _arrays(()), quality=st.integers(5, 100))
def test_jpeg_loads_with_the_right_shape_and_range(tmp_path_factory, arr, quality):
    from PIL import Image

    from rewardflow.io.images import load_image

    p = tmp_path_factory.mktemp("img") / "x.jpg"
    Image.fromarray(arr).save(p, quality=quality)
    x = load_image(p)
    assert x.shape == (3, *arr.shape[:2]) and x.dtype == torch.float32
    assert torch.isfinite(x).all() and 0 <= float(x.min()) and float(x.max()) <= 1


PNG_MAGIC, JPEG_MAGIC = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0"


@SMALL
@given(data=st.binary(max_size=2048), prefix=st.sampled_from([b"", PNG_MAGIC, JPEG_MAGIC, b"GIF89a", b"RIFF"]),
       suffix=st.sampled_from([".png", ".jpg", ".webp"]))
def test_random_bytes_raise_image_read_error_naming_the_file(tmp_path_factory, data, prefix, suffix):
    from rewardflow.io.images import ImageReadError, load_image

    p = tmp_path_factory.mktemp("img") / f"junk{suffix}"
    p.write_bytes(prefix + data)
    try:
        x = load_image(p)
    except ImageReadError as e:
        assert f"cannot read image {p}" in str(e)
    else:  # astronomically unlikely: the bytes were a valid image; then it must be a proper one
        assert x.ndim == 3 and x.shape[0] == 3


@SMALL
@given(arr=_arrays((3,)), cut=st.floats(0.0, 0.95))
def test_truncated_png_raises_or_loads_whole(tmp_path_factory, arr, cut):
    from PIL import Image

    from rewardflow.io.images import ImageReadError, load_image

    d = tmp_path_factory.mktemp("img")
    Image.fromarray(arr).save(d / "full.png")
    raw = (d / "full.png").read_bytes()
    (d / "cut.png").write_bytes(raw[: int(len(raw) * cut)])
    try:
        x = load_image(d / "cut.png")
    except ImageReadError as e:
        assert "cut.png" in str(e)
    else:  # only the trailer was cut: the pixels are all there
        assert torch.equal(x, load_image(d / "full.png"))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=4096), prefix=st.sampled_from([b"", b"\x00\x00\x00\x18ftypmp42", b"\x1aE\xdf\xa3"]))
def test_random_bytes_raise_video_read_error(tmp_path_factory, data, prefix):
    pytest.importorskip("av")
    from rewardflow.io.video import VideoReadError, load_video

    p = tmp_path_factory.mktemp("vid") / "junk.mp4"
    p.write_bytes(prefix + data)
    with pytest.raises(VideoReadError, match="junk.mp4"):
        load_video(p, backend="pyav")


def test_float_tuple_elements_in_exponent_form_are_floats(tmp_path):
    """Found by test_overrides_round_trip: YAML 1.1 reads ``1e-05`` as a string; tuple elements were not coerced."""
    for c in (load_config(Sample, None, ["reward_weights=[1e-05, 2]"]),
              load_config(Sample, None, ["reward_weights=1e-05,2"])):
        assert c.reward_weights == (1e-05, 2.0) and all(type(w) is float for w in c.reward_weights)
    (tmp_path / "c.yaml").write_text("reward_weights: [1e-5, 0.5]\n")
    assert load_config(Sample, tmp_path / "c.yaml").reward_weights == (1e-5, 0.5)
    with pytest.raises(ValueError, match=r"config key 'reward_weights\[1\]' expects float, got 'heavy'"):
        load_config(Sample, None, ["reward_weights=[1, heavy]"])
