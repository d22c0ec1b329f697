"""The media manifest: `sample`, `noise-opt` and the plain layout write it; `score --prompts`, the prompt-file
reader (`eval` / `sample --prompts`) read it; `score --prompts` also takes .csv / .jsonl / plain lines."""

import json

import pytest
import torch

from rewardflow.cli import main
from rewardflow.commands.score import read_prompts
from rewardflow.io.images import list_images, open_image
from rewardflow.io.manifest import manifest_prompts, read_manifest
from rewardflow.io.prompts import read_prompt_file
from rewardflow.rewards.base import load_reward


def _scores(path):
    return {r["file"]: r for r in json.loads(path.read_text())["rows"]}


def test_sample_then_score_with_the_manifest_scores_every_sample(tmp_path, capsys):
    (tmp_path / "p.txt").write_text("a red circle\n# a comment\ntwo blue squares\na red circle\n")
    s = tmp_path / "S"
    assert main(["sample", "--model", "toy", "--prompts", str(tmp_path / "p.txt"), "--n-per-prompt", "2",
                 "--steps", "2", "--out", str(s), "--quiet"]) == 0
    man = read_manifest(s / "manifest.json")
    assert man["format"] == "rewardflow-media/1" and man["media"] == "image" and len(man["images"]) == 6
    assert capsys.readouterr().err == ""  # --quiet: no progress bars
    out = tmp_path / "scores.json"
    assert main(["score", "--reward", "toy_clip", "--images", str(s), "--prompts", str(s / "manifest.json"),
                 "--out", str(out), "-q"]) == 0
    rows = _scores(out)
    assert len(rows) == 6
    reward = load_reward("toy_clip").eval()
    for r in man["images"]:
        got = rows[str(s / r["file"])]
        assert got["prompt"] == r["prompt"]
        want = reward.score_files([open_image(s / r["file"])], [r["prompt"]])["score"].item()
        assert got["toy_clip"] == pytest.approx(want, abs=1e-6)
    # without --prompts: the manifest in the --images folder
    out2 = tmp_path / "scores2.json"
    assert main(["score", "--reward", "toy_clip", "--images", str(s), "--out", str(out2), "-q"]) == 0
    assert _scores(out2) == rows
    # the manifest as a prompt file: its prompts once each, in prompt order (a repeated prompt stays repeated)
    assert read_prompt_file(s / "manifest.json") == ["a red circle", "two blue squares", "a red circle"]
    assert manifest_prompts(s) == read_prompt_file(s / "manifest.json")


def test_noise_opt_output_scores_through_its_manifest(tmp_path):
    out = tmp_path / "no"
    (tmp_path / "p.txt").write_text("a red circle\ntwo blue squares\na green triangle\n")
    assert main(["noise-opt", "--model", "toy", "--prompts", str(tmp_path / "p.txt"), "--iterations", "2",
                 "--batch-size", "3", "--out", str(out), "-q"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    scores = tmp_path / "s.json"
    assert main(["score", "--reward", summary["reward"], "--images", str(out / "final" / "images"), "--prompts",
                 str(out / "final" / "manifest.json"), "--out", str(scores), "-q"]) == 0
    rows = sorted(_scores(scores).values(), key=lambda r: r["file"])
    assert [r["prompt"] for r in rows] == ["a red circle", "two blue squares", "a green triangle"]
    # the files' scores are the optimized rewards up to the 8-bit PNG quantization
    for r, p in zip(rows, summary["per_prompt"]):
        assert r["total"] == pytest.approx(p["final_reward"], abs=0.02)
    # the initial images too
    assert main(["score", "--reward", "toy_clip", "--images", str(out / "initial" / "images"), "--prompts",
                 str(out / "initial" / "manifest.json"), "-q"]) == 0


def _files(tmp_path, n=3):
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(n):
        from rewardflow.io.images import save_image

        save_image(torch.full((3, 8, 8), i / n), d / f"{i:02d}.png")
    return list_images(d)


def test_score_prompt_file_forms(tmp_path):
    files = _files(tmp_path)
    want = ["p zero", "p one", "p two"]
    # a jsonl whose 'file' is relative to its own folder (as noise-opt wrote prompts.jsonl): the reported bug
    (tmp_path / "rel.jsonl").write_text("".join(json.dumps({"file": f"imgs/{f.name}", "prompt": p}) + "\n"
                                                for f, p in zip(files, want)))
    assert read_prompts(tmp_path / "rel.jsonl", files) == want
    # jsonl / csv without 'file': in order
    (tmp_path / "ord.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in want))
    assert read_prompts(tmp_path / "ord.jsonl", files) == want
    (tmp_path / "ord.csv").write_text("prompt\n" + "\n".join(want) + "\n", encoding="utf-8-sig")
    assert read_prompts(tmp_path / "ord.csv", files) == want
    (tmp_path / "map.csv").write_text("file,prompt\n" + "".join(f"{f.name},{p}\n" for f, p in
                                                                 zip(reversed(files), reversed(want))))
    assert read_prompts(tmp_path / "map.csv", files) == want
    # plain lines: the prompt-file rules (byte-order mark, '#' comments, blank lines)
    (tmp_path / "p.txt").write_text("\ufeffp zero\n# not a prompt\n\np one\np two\n", encoding="utf-8")
    assert read_prompts(tmp_path / "p.txt", files) == want
    with pytest.raises(ValueError, match="has 2 prompts .* but 3 images"):
        (tmp_path / "short.txt").write_text("a\nb\n")
        read_prompts(tmp_path / "short.txt", files)
    (tmp_path / "half.jsonl").write_text(json.dumps({"file": "00.png", "prompt": "a"}) + "\n"
                                         + json.dumps({"prompt": "b"}) + "\n")
    with pytest.raises(ValueError, match="1 of 2 lines have a 'file'"):
        read_prompts(tmp_path / "half.jsonl", files)
    (tmp_path / "other.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="not a media manifest"):
        read_prompts(tmp_path / "other.json", files)


def test_score_manifest_for_other_files_names_the_missing_ones(tmp_path, capsys):
    files = _files(tmp_path)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "manifest.json").write_text(json.dumps({"images": [{"file": "x.png", "prompt": "a"}]}))
    assert main(["score", "--reward", "toy_clip", "--images", str(tmp_path / "imgs"), "--prompts",
                 str(tmp_path / "m" / "manifest.json"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "has no prompt for 3 image(s): 00.png, 01.png, 02.png (of the 3 --images" in err and len(files) == 3
    assert main(["score", "--reward", "toy_clip", "--images", str(tmp_path / "imgs"), "-q"]) == 2
    assert "give --prompts FILE or --prompt TEXT" in capsys.readouterr().err
