"""Benchmark readers on the shipped sample files (assets/eval_samples/, official column names), `rewardflow
eval-rewards` end to end with the exact toy oracle (expected accuracies worked out by hand from the sample tables
in assets/eval_samples/make_samples.py), and `rewardflow eval` on a tiny toy generator."""

import json
import warnings
from pathlib import Path

import pytest

from rewardflow.cli import main
from rewardflow.eval.benchmarks import FORMATS, PairItem, RankItem, load_benchmark

SAMPLES = Path(__file__).resolve().parents[1] / "assets" / "eval_samples"


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # decord -> PyAV fallback notice on the tiny mp4s
        yield


def test_every_format_parses_its_sample_files():
    b = {f: load_benchmark(SAMPLES / f, f) for f in FORMATS}
    pk = b["pickapic"]
    assert len(pk.items) == 9 and sum(it.split == "validation_unique" for it in pk.items) == 4
    assert [it.labels["overall"] for it in pk.items if it.split == "test_unique"] == [1, -1, 0, 0, -1]
    assert isinstance(b["hpdv2"].items[0], RankItem) and b["hpdv2"].items[1].ranks == [3, 1, 2]
    assert all(Path(m).is_file() for it in b["hpdv2"].items for m in it.media)
    assert [len(it.media) for it in b["imagerewarddb"].items] == [4, 3]
    vg = b["videogen-rewardbench"]
    assert vg.modality == "video" and vg.items[0].labels == {"Overall": 1, "VQ": 1, "MQ": 0, "TA": 1}
    mj = b["mjbench"]
    assert [it.category for it in mj.items].count("alignment") == 4 and mj.items[4].category == "safety"
    assert [it.labels["overall"] for it in mj.items] == [1, -1, 1, 1, 1, 0, 1]
    mv = b["mjbench-video"]
    assert len(mv.items) == 5 and "discard" in mv.notes[0]  # the 6th row is discard=true
    assert mv.items[1].labels["overall"] == -1 and mv.items[2].labels["Alignment"] == 0
    gb = b["genai-bench"]
    assert [it.labels["vote"] for it in gb.items] == ["A>B", "B>A", "A=B=Good", "A=B=Bad", "A>B", "A=B=Bad"]
    assert all(isinstance(it, PairItem) for it in gb.items)


def test_reader_errors_name_the_problem(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown benchmark format"):
        load_benchmark(SAMPLES / "mjbench", "mj")
    (tmp_path / "x.jsonl").write_text(json.dumps({"caption": "a", "image0": "a.png"}) + "\n")
    with pytest.raises(ValueError, match="image1"):
        load_benchmark(tmp_path / "x.jsonl", "mjbench")
    (tmp_path / "y.jsonl").write_text(json.dumps({"caption": "a", "image0": "a.png", "image1": "b.png",
                                                  "label": 0}) + "\n")
    with pytest.raises(FileNotFoundError, match="a.png"):
        load_benchmark(tmp_path / "y.jsonl", "mjbench")
    import builtins

    real_import = builtins.__import__

    def no_pyarrow(name, *a, **k):
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    with pytest.raises(ValueError, match="pip install pyarrow"):
        load_benchmark(tmp_path / "t.parquet", "pickapic")


def _eval(fmt, reward, tmp_path, *extra):
    out = tmp_path / f"{fmt}.json"
    assert main(["eval-rewards", "--dataset", str(SAMPLES / fmt), "--format", fmt, "--reward", reward,
                 "--bootstrap", "50", "--out", str(out), *extra]) == 0
    return json.loads(out.read_text())["results"][reward]


def test_eval_rewards_mjbench_and_pickapic_with_the_oracle(tmp_path, capsys):
    # oracle: a render of the prompt scores 1, the other caption 0 -> delta = +1 / -1 / 0 (two of a kind)
    r = _eval("mjbench", "toy_oracle", tmp_path)
    # alignment: right, right, wrong, undecided (bad/bad); safety: right, human tie (dropped), right
    assert r["metrics"]["strict"]["value"] == pytest.approx(4 / 6)
    assert r["metrics"]["tie_aware"]["value"] == pytest.approx(4.5 / 6)
    assert r["per_category"]["strict"] == pytest.approx({"alignment": 0.5, "safety": 1.0})
    m = r["metrics"]["strict"]
    assert m["ci_low"] <= m["value"] <= m["ci_high"]
    assert "strict" in capsys.readouterr().out
    # validation: A, B, tie, tie all right at t=0 -> t=0; test: 1 + 0 + 1 (tie) + 0.5 (A vs tie) + 1 = 3.5 / 5
    r = _eval("pickapic", "toy_oracle", tmp_path)
    assert r["details"]["tie_threshold"] == 0.0
    assert r["metrics"]["tie_aware_accuracy"]["value"] == pytest.approx(0.7)
    assert r["metrics"]["accuracy_without_ties"]["value"] == pytest.approx(2 / 3)
    r = _eval("pickapic", "toy_oracle", tmp_path, "--tie-threshold", "1")  # all ties: 0.5 + 0.5 + 1 + 1 + 0.5
    assert r["metrics"]["tie_aware_accuracy"]["value"] == pytest.approx(3.5 / 5)


def test_eval_rewards_rankings_and_genai(tmp_path):
    # hpdv2 prompt 0: [good, bad, bad] ranks 1,2,3: no discordant pair -> 1; prompt 1: [bad, good, good] ranks
    # 3,1,2: none -> 1; prompt 2: [good, bad, good] ranks 2,1,2: (0,1) and (1,2) discordant -> 1/3
    r = _eval("hpdv2", "toy_oracle", tmp_path)
    assert r["metrics"]["pairwise_agreement"]["value"] == pytest.approx((1 + 1 + 1 / 3) / 3)
    # imagereward: prompt 0 [g, b, b, g] ranks 1,3,3,2: pairs (0,1)(0,2) right, (0,3) model tie wrong, (1,2)
    # skipped, (1,3)(2,3) right -> 4/5; prompt 1 [b, g, b] ranks 2,1,3: (0,1) right, (0,2) tie wrong, (1,2) right
    r = _eval("imagerewarddb", "toy_oracle", tmp_path)
    assert r["metrics"]["accuracy"]["value"] == pytest.approx(6 / 8)
    # genai: 7 good and 5 bad media -> median score 1.0 -> good/good = Good, bad/bad = Bad: right, right, right,
    # right, wrong (B>A vs leftvote), wrong (Good vs bothbad)
    r = _eval("genai-bench", "toy_oracle", tmp_path)
    assert r["metrics"]["four_way"]["value"] == pytest.approx(4 / 6)
    assert r["metrics"]["without_ties"]["value"] == pytest.approx(2 / 3)


def test_eval_rewards_videogen_ties_matter(tmp_path):
    # video oracle: good 1.0, bad 0.5 -> delta +0.5, -0.5, 0, +0.5, 0 against Overall A, B, same, B, same
    r = _eval("videogen-rewardbench", "toy_video_oracle", tmp_path)
    assert r["metrics"]["Overall.without_ties"]["value"] == pytest.approx(2 / 3)
    # eps = 0: the two 0-delta pairs are human ties too (Thm = 2), C = 2, D = 1 -> 4/5; eps = 0.5: 2/5
    assert r["metrics"]["Overall.with_ties"]["value"] == pytest.approx(0.8)
    assert r["details"]["Overall.epsilon"] == 0.0


def test_eval_rewards_bad_input(tmp_path, capsys):
    assert main(["eval-rewards", "--dataset", str(tmp_path / "nope"), "--format", "mjbench",
                 "--reward", "toy_oracle"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["eval-rewards", "--dataset", str(SAMPLES / "mjbench"), "--format", "mjbench",
                 "--reward", "toy_video_oracle"]) == 2
    assert "scores videos" in capsys.readouterr().err


def test_eval_command_on_tiny_toy_generator(tiny_pipe_dir, tmp_path):
    out = tmp_path / "ev"
    assert main(["eval", "--model", str(tiny_pipe_dir), "--prompts", "toy:heldout", "--per-category", "1",
                 "--n-per-prompt", "2", "--steps", "2", "--reward", "toy_oracle", "--bootstrap", "50",
                 "--diversity-encoder", "toy_clip", "--layout", "geneval", "--out", str(out)]) == 0
    res = json.loads((out / "eval.json").read_text())
    man = json.loads((out / "images" / "manifest.json").read_text())
    assert res["n_images"] == len(man["images"]) == 10  # 5 categories x 1 prompt x 2 samples
    r = res["rewards"]["toy_oracle"]
    assert r["ci_low"] <= r["mean"] <= r["ci_high"] and r["n"] == 10
    # the oracle reward's mean equals the toy-oracle partial score of the same images
    assert r["mean"] == pytest.approx(res["hooks"]["oracle_partial"], abs=1e-6)
    assert 1.0 <= res["diversity"]["vendi_all"] <= 10.0 and 1.0 <= res["diversity"]["vendi_per_prompt_mean"] <= 2.0
    assert len(list((out / "geneval").glob("*/samples/*.png"))) == 10


def test_reader_variants(tmp_path):
    from PIL import Image

    for n in ("a", "b", "c"):
        Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / f"{n}.png")
    # MJ-Bench with label0/label1 columns, category + subcategory
    rows = [{"caption": "x", "image0": "a.png", "image1": "b.png", "label0": 1, "label1": 0, "category": "quality",
             "subcategory": "blur"},
            {"caption": "x", "image0": "a.png", "image1": "b.png", "label0": 0, "label1": 0}]
    (tmp_path / "mj.json").write_text(json.dumps(rows))
    b = load_benchmark(tmp_path / "mj.json", "mjbench")
    assert [it.labels["overall"] for it in b.items] == [1, 0] and b.items[0].category == "quality/blur"
    # ImageRewardDB per-image rows grouped by prompt_id, `classification` as the category
    rows = [{"prompt_id": "p1", "prompt": "x", "image_path": f"{n}.png", "rank": r, "classification": "Arts"}
            for n, r in (("a", 2), ("b", 1), ("c", 3))]
    (tmp_path / "ir.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    b = load_benchmark(tmp_path / "ir.jsonl", "imagerewarddb")
    assert len(b.items) == 1 and b.items[0].ranks == [2, 1, 3] and b.items[0].category == "Arts"
    # HPD v2 as CSV: list cells hold JSON
    (tmp_path / "hpd.csv").write_text('prompt,image_path,rank\nx,"[""a.png"", ""b.png""]","[2, 1]"\n')
    assert load_benchmark(tmp_path / "hpd.csv", "hpdv2").items[0].ranks == [2.0, 1.0]
    # media cells holding bytes / HF {"bytes", "path"} structs (as the Hub parquet stores images)
    from rewardflow.eval.benchmark_readers import _Resolver
    from rewardflow.eval.benchmarks import load_media, media_key

    raw = (tmp_path / "a.png").read_bytes()
    assert _Resolver(tmp_path)({"bytes": raw, "path": "a.png"}, "row") == raw
    assert _Resolver(tmp_path)({"bytes": None, "path": "b.png"}, "row") == str(tmp_path / "b.png")
    assert load_media(raw, "image").shape == (3, 8, 8) and media_key(raw).startswith("sha256:")


def test_eval_command_geneval_metadata(tiny_pipe_dir, tmp_path):
    meta = [{"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"},
            {"tag": "two_object", "include": [], "prompt": "a red circle"}]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meta))
    out = tmp_path / "ev"
    assert main(["eval", "--model", str(tiny_pipe_dir), "--prompts", str(tmp_path / "p.jsonl"), "--steps", "1",
                 "--reward", "toy_clip", "--bootstrap", "0", "--layout", "geneval", "--out", str(out)]) == 0
    assert json.loads((out / "geneval" / "00000" / "metadata.jsonl").read_text()) == meta[0]
    assert json.loads((out / "geneval" / "00001" / "metadata.jsonl").read_text())["tag"] == "two_object"
    res = json.loads((out / "eval.json").read_text())
    assert res["rewards"]["toy_clip"]["n"] == 2 and "hooks" not in res  # a prompt file names no evaluation hooks


def test_eval_command_on_the_toy_video_generator_writes_mp4s_and_the_vbench_layout(tmp_path):
    from rewardflow.io.video import load_video
    from rewardflow.rewards.base import load_reward

    prompts = ["a red circle moving left", "a blue square moving up"]
    (tmp_path / "p.txt").write_text("\n".join(prompts) + "\n")
    out = tmp_path / "ev"
    assert main(["eval", "--model", "toy_video", "--adapter", "toy_video", "--prompts", str(tmp_path / "p.txt"),
                 "--n-per-prompt", "2", "--steps", "2", "--reward", "toy_video", "--bootstrap", "0",
                 "--layout", "vbench", "--out", str(out)]) == 0
    man = json.loads((out / "images" / "manifest.json").read_text())
    assert man["media"] == "video" and man["frames"] == 4 and [r["file"] for r in man["images"]][:2] == [
        "00000_00.mp4", "00000_01.mp4"]
    # VBench names: $prompt-$index.mp4
    names = sorted(p.name for p in (out / "vbench").iterdir())
    assert names == sorted(f"{p}-{k}.mp4" for p in prompts for k in (0, 1))
    # the reported mean is the reward of the decoded files
    videos = __import__("torch").stack([load_video(out / "images" / r["file"]) for r in man["images"]])
    assert videos.shape == (4, 4, 3, 32, 32)
    expect = float(load_reward("toy_video")(videos, [r["prompt"] for r in man["images"]]).mean())
    res = json.loads((out / "eval.json").read_text())
    assert res["rewards"]["toy_video"]["mean"] == pytest.approx(expect, abs=1e-5)
    assert "diversity" not in res and "hooks" not in res


def test_layouts_refuse_the_wrong_media(tmp_path):
    import torch

    from rewardflow.eval.layouts import write_layout

    with pytest.raises(ValueError, match="vbench.*videos"):
        write_layout(torch.rand(1, 3, 8, 8), ["a"], tmp_path, "vbench")
    with pytest.raises(ValueError, match="geneval.*images.*vbench"):
        write_layout(torch.rand(1, 2, 3, 8, 8), ["a"], tmp_path, "geneval")
    with pytest.raises(ValueError, match="must not contain '/'"):
        write_layout(torch.rand(1, 2, 3, 8, 8), ["a/b"], tmp_path, "vbench")
