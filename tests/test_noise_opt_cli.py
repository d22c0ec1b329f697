"""`rewardflow noise-opt` end to end on the shipped toy model, and the evaluator folder layouts."""

import json

import pytest
import torch
from PIL import Image

from rewardflow.cli import main
from rewardflow.eval.layouts import write_layout


def test_noise_opt_reno_writes_images_curve_and_summary(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n\ntwo blue squares\n")
    out = tmp_path / "out"
    rc = main(["noise-opt", "--model", "toy", "--prompts", str(prompts), "--iterations", "3", "--batch-size", "2", "--gradient-checkpointing",
               "--out", str(out)])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["method"] == "reno" and s["prompts"] == 2 and s["reward"] == "toy_clip:1,toy_clip_adv:1"
    assert s["cpu"]["torch_threads"] == torch.get_num_threads() and s["cpu"]["wait"]  # the CPU threading
    curves = json.loads((out / "curve.json").read_text())
    assert len(curves) == 2 and all(len(c) == 3 for c in curves)
    for row, c in zip(s["per_prompt"], curves):
        # best iterate: the final reward is the max of the curve, never below the start
        assert row["final_reward"] == pytest.approx(max(c), abs=1e-6)
        assert row["initial_reward"] == pytest.approx(c[0], abs=1e-6)
    assert (out / "curve.png").stat().st_size > 0
    rows = json.loads((out / "final" / "manifest.json").read_text())["images"]
    assert [r["prompt"] for r in rows] == ["a red circle", "two blue squares"]
    assert [r["final_reward"] for r in rows] == [r["final_reward"] for r in s["per_prompt"]]
    assert Image.open(out / "final" / rows[0]["file"]).size == (32, 32)
    assert len(list((out / "initial" / "images").glob("*.png"))) == 2


def test_noise_opt_best_of_n_and_nrg(tmp_path):
    out = tmp_path / "bon"
    assert main(["noise-opt", "--model", "toy", "--prompt", "a red circle", "--method", "best-of-n", "--n", "3",
                 "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    cand = json.loads((out / "curve.json").read_text())[0]
    assert len(cand) == 3 and s["per_prompt"][0]["final_reward"] == pytest.approx(max(cand), abs=1e-6)
    out = tmp_path / "nrg"
    assert main(["noise-opt", "--model", "toy", "--prompt", "a red circle", "--method", "nrg", "--out", str(out),
                 "--layout", "geneval"]) == 0
    assert json.loads((out / "final" / "00000" / "metadata.jsonl").read_text()) == {"prompt": "a red circle"}


def test_noise_opt_bad_input(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert main(["noise-opt", "--model", "toy", "--prompts", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "no prompts" in capsys.readouterr().err
    assert main(["noise-opt", "--model", "toy", "--prompts", str(tmp_path / "missing.txt")]) == 2
    assert "prompt file not found" in capsys.readouterr().err
    assert main(["noise-opt", "--model", "toy", "--prompt", "a red circle", "--reward", "hpsv3"]) == 2
    assert "unknown reward" in capsys.readouterr().err


def test_layouts(tmp_path):
    imgs = torch.rand(3, 3, 8, 8)
    prompts = ["a cat", "a cat", "a dog"]
    files = write_layout(imgs, prompts, tmp_path / "ge", "geneval", sample_index=[0, 1, 0],
                         metadata=[{"prompt": "a cat", "tag": "single_object"}] * 2 + [{"prompt": "a dog"}])
    assert [f.split("ge/")[1] for f in files] == ["00000/samples/0000.png", "00000/samples/0001.png",
                                                  "00001/samples/0000.png"]
    assert json.loads((tmp_path / "ge" / "00000" / "metadata.jsonl").read_text())["tag"] == "single_object"
    files = write_layout(imgs, prompts, tmp_path / "tc", "t2i-compbench", sample_index=[0, 1, 0])
    assert [f.split("samples/")[1] for f in files] == ["a cat_000000.png", "a cat_000001.png", "a dog_000000.png"]
    # the PNG holds the image (8-bit rounding)
    back = torch.from_numpy(__import__("numpy").array(Image.open(files[2]))).permute(2, 0, 1).float() / 255
    assert torch.allclose(back, imgs[2], atol=1 / 255 + 1e-6)
    with pytest.raises(ValueError, match="unknown layout"):
        write_layout(imgs, prompts, tmp_path / "x", "coco")
    with pytest.raises(ValueError, match="cannot contain '/'"):
        write_layout(imgs[:1], ["a/b"], tmp_path / "y", "t2i-compbench")


def test_noise_opt_nrg_with_a_latent_reward_model(tmp_path, capsys):
    from rewardflow.pipelines.registry import load_generator
    from rewardflow.rewards.latent import LatentRewardModel

    gen = load_generator("toy", guidance_scale=2.0)
    torch.manual_seed(0)
    LatentRewardModel(gen, n_blocks=1, hidden=8).save_pretrained(tmp_path / "lrm")
    base = ["noise-opt", "--model", "toy", "--prompt", "a red circle", "--method", "nrg", "--latent-reward", str(tmp_path / "lrm")]
    # scale 0: exactly the plain sample; scale 50: guided away from it (the head is random but non-constant)
    assert main([*base, "--nrg-scale", "0", "--out", str(tmp_path / "o0")]) == 0
    assert main([*base, "--nrg-scale", "50", "--out", str(tmp_path / "o1")]) == 0
    import numpy as np

    px = lambda d, sub: torch.from_numpy(np.asarray(Image.open(next((tmp_path / d / sub / "images").glob("*.png")))))
    assert torch.equal(px("o0", "final"), px("o0", "initial"))
    assert not torch.equal(px("o1", "final"), px("o1", "initial"))
    assert main(["noise-opt", "--model", "toy", "--prompt", "a red circle", "--latent-reward", str(tmp_path / "lrm"),
                 "--out", str(tmp_path / "o2")]) == 2
    assert "--method nrg" in capsys.readouterr().err
