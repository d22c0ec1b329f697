"""JPEG rewards, reward specs, image I/O, and `rewardflow score` end to end."""

import csv
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from rewardflow.cli import main
from rewardflow.io.images import ImageReadError, list_images, load_image, save_image, to_uint8
from rewardflow.rewards.base import load_reward, require_differentiable
from rewardflow.rewards.combine import WeightedReward, build_reward, parse_reward_spec


def pil_jpeg_kb(x: torch.Tensor) -> float:
    """Independent reference: DDPO's uint8 quantization in numpy, PIL JPEG q=95, bytes / 1000."""
    arr = np.clip(np.round(x.permute(1, 2, 0).numpy().astype(np.float64) * 255), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return len(buf.getvalue()) / 1000


# ----------------------------------------------------------------------------------------------- JPEG
def test_jpeg_rewards_equal_pil_sizes():
    torch.manual_seed(0)
    x = torch.stack([torch.rand(3, 40, 56), torch.full((3, 40, 56), 0.5), torch.rand(3, 40, 56).round()])
    want = torch.tensor([pil_jpeg_kb(im) for im in x])
    inc, comp = load_reward("jpeg_incompressibility"), load_reward("jpeg_compressibility")
    torch.testing.assert_close(inc(x, ["a"] * 3), want)
    torch.testing.assert_close(comp(x, ["a"] * 3), -want)
    assert want[0] > 5 * want[1]  # noise is far less compressible than a flat image
    flow_grpo = load_reward("jpeg_compressibility", scale=1 / 500)
    torch.testing.assert_close(flow_grpo(x, ["a"] * 3), -want / 500)
    assert not inc.differentiable
    with pytest.raises(ValueError, match="black-box"):
        require_differentiable(comp, "ReFL")
    with pytest.raises(ValueError, match="quality must be in"):
        load_reward("jpeg_compressibility", quality=0)


# ----------------------------------------------------------------------------------------------- specs
def test_parse_reward_spec():
    assert parse_reward_spec("hpsv2.1:5,imagereward:1") == [("hpsv2.1", 5.0), ("imagereward", 1.0)]
    assert parse_reward_spec(" toy_clip , jpeg_compressibility:-0.5,toy_oracle:0 ") == [
        ("toy_clip", 1.0), ("jpeg_compressibility", -0.5), ("toy_oracle", 0.0)]
    for bad, msg in [("", "empty reward spec"), ("a:1,,b", "empty item"), (":3", "missing reward name"),
                     ("a:x", "bad weight 'x'"), ("a:nan", "must be finite"), ("a:inf", "must be finite"),
                     ("a:1,a:2", "appears twice")]:
        with pytest.raises(ValueError, match=msg):
            parse_reward_spec(bad)


def test_build_reward():
    r = build_reward("toy_oracle")
    assert r.name == "toy_oracle" and not isinstance(r, WeightedReward)
    w = build_reward("toy_oracle:2,jpeg_incompressibility:-0.1", **{"jpeg_incompressibility": {"quality": 50}})
    assert isinstance(w, WeightedReward) and w.weights == [2.0, -0.1] and w.rewards[1].quality == 50
    assert isinstance(build_reward("toy_oracle:3"), WeightedReward)  # a weight other than 1 is kept
    with pytest.raises(KeyError, match=r"unknown reward 'toy_clipp'.*Did you mean 'toy_clip'.*Known rewards:.*jpeg"):
        build_reward("toy_clipp:1")
    with pytest.raises(ValueError, match="not in the reward spec"):
        build_reward("toy_oracle", toy_clip={"path": "x"})


def test_weighted_reward_total_and_nan_propagation():
    from rewardflow.toy import world

    caption = "a red circle"
    img = torch.from_numpy(world.render(caption, rng=np.random.default_rng(0))).permute(2, 0, 1).float()[None] / 255
    w = build_reward("toy_oracle:2,jpeg_incompressibility:-0.5")
    total = w(img, [caption])
    want = 2 * world.oracle_score_batch(img, [caption])[0] - 0.5 * pil_jpeg_kb(img[0])
    assert total.item() == pytest.approx(want, rel=1e-5)
    assert set(w.last_components) == {"toy_oracle#0", "jpeg_incompressibility#1"}


# ----------------------------------------------------------------------------------------------- image I/O
def test_image_io_formats_alpha_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    x = load_image(tmp_path / "a.png")
    assert x.shape == (3, 20, 30) and x.dtype == torch.float32
    # alpha dropped (as PIL's convert("RGB") in the official scorers), not composited
    np.testing.assert_array_equal((x * 255).round().byte().permute(1, 2, 0).numpy(), rgba[..., :3])
    Image.fromarray(rgba[..., :3]).save(tmp_path / "b.webp", lossless=True)
    np.testing.assert_array_equal(to_uint8(load_image(tmp_path / "b.webp")).numpy(), rgba[..., :3])
    Image.fromarray(rgba[..., 0]).save(tmp_path / "c.jpg", quality=90)  # greyscale JPEG -> 3 equal channels
    g = load_image(tmp_path / "c.jpg")
    assert g.shape == (3, 20, 30) and torch.equal(g[0], g[2])

    y = torch.rand(3, 9, 7)
    save_image(y, tmp_path / "out" / "y.png")
    assert torch.equal(load_image(tmp_path / "out" / "y.png"), to_uint8(y).permute(2, 0, 1).float() / 255)
    with pytest.raises(ValueError, match="writes PNG"):
        save_image(y, tmp_path / "y.jpg")

    (tmp_path / "trunc.png").write_bytes((tmp_path / "a.png").read_bytes()[:200])
    (tmp_path / "junk.jpg").write_bytes(b"this is not an image")
    for name in ("trunc.png", "junk.jpg"):
        with pytest.raises(ImageReadError, match=f"cannot read image .*{name}"):
            load_image(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="image file not found"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.webp", "c.jpg", "junk.jpg", "trunc.png"]
    # a recursive glob, sorted by path (out/y.png before trunc.png)
    assert [p.name for p in list_images(str(tmp_path / "**" / "*.png"))] == ["a.png", "y.png", "trunc.png"]
    with pytest.raises(FileNotFoundError, match="no image files"):
        list_images(str(tmp_path / "*.gif"))


# ----------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """Toy-world PNGs (two sizes, so two shape groups) with their captions, plus one corrupt PNG."""
    from rewardflow.toy import world

    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    captions = ["a red circle", "a blue square", "a green triangle", "a red circle and a blue square",
                "a yellow circle"]
    for i, c in enumerate(captions):
        # image 3 is rendered for another caption, so the oracle fails it
        Image.fromarray(world.render("a green square" if i == 3 else c, size=48 if i == 1 else 32, rng=rng)) \
            .save(d / f"img{i}.png")
    good = (d / "img0.png").read_bytes()
    (d / "img5_corrupt.png").write_bytes(good[: len(good) // 3])
    captions.append("a red square")
    return d, captions


@pytest.fixture(scope="module")
def ref(image_dir):
    """Scores computed independently: each image alone, through load_reward and the oracle function."""
    from rewardflow.toy import world

    d, captions = image_dir
    clip = load_reward("toy_clip")
    rows = []
    for i, c in enumerate(captions[:5]):
        arr = np.asarray(Image.open(d / f"img{i}.png").convert("RGB"))
        x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float()[None] / 255
        with torch.no_grad():
            s_clip = clip(x, [c]).item()
        s_oracle = float(world.oracle_score_batch(x, [c])[0])
        rows.append({"file": str(d / f"img{i}.png"), "prompt": c, "toy_clip": s_clip, "toy_oracle": s_oracle,
                     "total": 2 * s_clip + s_oracle})
    return rows


def test_score_cli_csv_and_json(image_dir, ref, tmp_path, capsys):
    d, captions = image_dir
    (tmp_path / "prompts.txt").write_text("\n".join(captions) + "\n\n")
    assert ref[3]["toy_oracle"] < 1 and ref[0]["toy_oracle"] == 1  # the data has a failure and a pass

    for ext in ("csv", "json"):
        out = tmp_path / f"scores.{ext}"
        assert main(["score", "--reward", "toy_clip:2,toy_oracle", "--images", str(d), "--prompts",
                     str(tmp_path / "prompts.txt"), "--out", str(out), "--batch-size", "4"]) == 0
        cap = capsys.readouterr()
        assert "skipped" in cap.err and "img5_corrupt.png" in cap.err and "cannot read image" in cap.err
        if ext == "csv":
            with open(out, newline="") as f:
                rows = list(csv.DictReader(f))
            assert list(rows[0]) == ["file", "prompt", "toy_clip", "toy_oracle", "total"]
        else:
            doc = json.loads(out.read_text())
            rows = doc["rows"]
            assert doc["columns"] == ["toy_clip", "toy_oracle", "total"]
            assert [s["file"] for s in doc["skipped"]] == [str(d / "img5_corrupt.png")]
            assert doc["summary"]["toy_oracle"]["n"] == 5
        assert len(rows) == 5
        for got, want in zip(rows, ref):
            assert got["file"] == want["file"] and got["prompt"] == want["prompt"]
            for k in ("toy_clip", "toy_oracle", "total"):
                assert float(got[k]) == pytest.approx(want[k], abs=1e-5), (got, k)
        # the summary table on stdout
        line = next(ln for ln in cap.out.splitlines() if ln.startswith("toy_clip "))
        n, mean, std, lo, hi, nan = line.split()[1:]
        vals = [r["toy_clip"] for r in ref]
        assert int(n) == 5 and int(nan) == 0
        assert float(mean) == pytest.approx(np.mean(vals), abs=1e-4)
        assert float(std) == pytest.approx(np.std(vals, ddof=1), abs=1e-4)
        assert float(lo) == pytest.approx(min(vals), abs=1e-4) and float(hi) == pytest.approx(max(vals), abs=1e-4)


def test_score_cli_prompt_mappings_and_weights(image_dir, ref, tmp_path, tiny_reward_dir, capsys):
    d, captions = image_dir
    # a JSONL mapping keyed by file name, in shuffled order, over a glob of three files
    lines = [json.dumps({"file": f"img{i}.png", "prompt": captions[i]}) for i in (2, 0, 1)]
    (tmp_path / "map.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "s.json"
    assert main(["score", "--reward", "toy_oracle", "--images", str(d / "img[0-2].png"), "--prompts",
                 str(tmp_path / "map.jsonl"), "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["prompt"] for r in rows] == captions[:3]
    assert [r["toy_oracle"] for r in rows] == [r["total"] for r in rows] == [x["toy_oracle"] for x in ref[:3]]

    # a CSV mapping that lacks a file -> a clear error, exit 2
    (tmp_path / "map.csv").write_text("file,prompt\nimg0.png,a red circle\n")
    assert main(["score", "--reward", "toy_oracle", "--images", str(d / "img[0-1].png"), "--prompts",
                 str(tmp_path / "map.csv")]) == 2
    assert "has no prompt for 1 image(s): img1.png" in capsys.readouterr().err

    # --prompt for all, --weights: a checkpoint path for the single reward
    out = tmp_path / "w.csv"
    assert main(["score", "--reward", "toy_clip", "--images", str(d / "img0.png"), "--prompt", "a red circle",
                 "--weights", str(tiny_reward_dir), "--out", str(out)]) == 0
    with open(out, newline="") as f:
        (row,) = list(csv.DictReader(f))
    x = load_image(d / "img0.png")[None]
    with torch.no_grad():
        want = load_reward("toy_clip", path=str(tiny_reward_dir))(x, ["a red circle"]).item()
    assert float(row["toy_clip"]) == pytest.approx(want, abs=1e-5)
    assert abs(want - ref[0]["toy_clip"]) > 1e-3  # really the other (random) weights


@pytest.mark.parametrize("argv, msg", [
    (["--prompt", "x", "--out", "s.txt"], "--out must end in .csv or .json"),
    (["--prompts", "PROMPTS"], "has 2 prompts (lines that are not blank or '#' comments) but 6 images"),
    (["--prompt", "x", "--reward", "toy_oracle,jpeg_compressibility", "--weights", "w.pt"], "NAME=PATH"),
    (["--prompt", "x", "--reward", "toy_oracle", "--weights", "w.pt"], "reward 'toy_oracle': got an unexpected keyword argument 'path'"),
    (["--prompt", "x", "--reward", "nope"], "unknown reward 'nope'"),
    (["--prompt", "x", "--batch-size", "0"], "--batch-size must be >= 1"),
])
def test_score_cli_errors(image_dir, tmp_path, capsys, argv, msg):
    d, _ = image_dir
    (tmp_path / "p.txt").write_text("a\nb\n")
    argv = [str(tmp_path / "p.txt") if a == "PROMPTS" else str(tmp_path / a) if a == "s.txt" else a for a in argv]
    base = ["score", "--images", str(d)] + ([] if "--reward" in argv else ["--reward", "toy_oracle"])
    assert main(base + argv) == 2
    assert msg in capsys.readouterr().err


def test_score_cli_all_unreadable_and_rewards_listing(tmp_path, capsys):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert main(["score", "--reward", "jpeg_compressibility", "--images", str(tmp_path), "--prompt", "x"]) == 2
    assert "none of the 1 image file(s) could be read" in capsys.readouterr().err
    assert main(["rewards"]) == 0
    out = capsys.readouterr().out
    for name in ("jpeg_compressibility", "jpeg_incompressibility", "vlm_judge"):
        (line,) = [ln for ln in out.splitlines() if ln.startswith(name + " ")]
        assert " no " in line and "image" in line


def test_score_cli_nan_is_written_as_nan_and_null(tmp_path, monkeypatch, capsys):
    """A real vlm_judge (fake server on loopback, configured through the environment) that cannot score the middle
    image: NaN in CSV, null in JSON, the total NaN too, and excluded from the summary (counted under nan)."""
    from test_judge import FakeServer, decode_data_url, reply

    for i in range(3):
        save_image(torch.full((3, 8, 8), i / 4), tmp_path / "imgs" / f"{i}.png")

    def responder(j, h, n):
        mean = decode_data_url(j["messages"][0]["content"][1]["image_url"]["url"]).mean() / 255
        return reply("I cannot tell." if abs(mean - 0.25) < 0.01 else "Final Score: 10")

    srv = FakeServer(responder)
    monkeypatch.setenv("REWARDFLOW_JUDGE_URL", srv.url)
    monkeypatch.setenv("REWARDFLOW_JUDGE_MODEL", "fake")
    try:
        for ext in ("csv", "json"):
            out = tmp_path / f"s.{ext}"
            assert main(["score", "--reward", "vlm_judge,jpeg_incompressibility:0.5", "--images",
                         str(tmp_path / "imgs"), "--prompt", "x", "--out", str(out)]) == 0
            if ext == "csv":
                with open(out, newline="") as f:
                    rows = list(csv.DictReader(f))
                assert [r["vlm_judge"] for r in rows] == ["1.0", "nan", "1.0"]
                assert rows[1]["total"] == "nan" and float(rows[1]["jpeg_incompressibility"]) > 0
            else:
                doc = json.loads(out.read_text())
                assert doc["rows"][1]["total"] is None and doc["rows"][1]["vlm_judge"] is None
                assert doc["summary"]["total"]["nan"] == 1 and doc["summary"]["total"]["n"] == 2
    finally:
        srv.close()
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("total "))
    assert line.split()[1] == "2" and line.split()[-1] == "1"
