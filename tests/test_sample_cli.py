"""``rewardflow models`` and ``rewardflow sample`` end to end (toy model and a tiny real SD pipeline)."""

import json

import pytest
import torch

from rewardflow.cli import main
from rewardflow.eval.sampling import initial_noise
from rewardflow.io.images import load_image, to_uint8
from rewardflow.testing.tiny_sd import build_tiny_sd
from rewardflow.pipelines.registry import load_generator


def _png_equals(path, image):
    """A written PNG equals the 8-bit quantization of the expected float image."""
    return torch.equal(load_image(path), to_uint8(image).permute(2, 0, 1).float() / 255)


def test_models_lists_adapters_with_pipeline_classes(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name, cls in [("sd", "StableDiffusionPipeline"), ("sdxl", "StableDiffusionXLPipeline"),
                      ("toy", "ToyFlowPipeline")]:
        assert any(line.split()[:2] == [name, cls] for line in out.splitlines()), (name, out)


def test_sample_toy_writes_pngs_and_manifest(tmp_path):
    assert main(["sample", "--model", "toy", "--prompt", "a red circle", "--n-per-prompt", "3", "--steps", "2",
                 "--seed", "7", "--batch-size", "2", "--out", str(tmp_path)]) == 0
    man = json.loads((tmp_path / "manifest.json").read_text())
    assert man["adapter"] == "toy" and man["steps"] == 2 and man["n_per_prompt"] == 3
    assert man["cpu"]["torch_threads"] == torch.get_num_threads()  # the CPU threading is recorded
    assert [r["file"] for r in man["images"]] == ["00000_00.png", "00000_01.png", "00000_02.png"]
    assert [r["seed"] for r in man["images"]] == [7, 8, 9]
    # each image equals the adapter's ODE sample from its own seed (independent of the batch size)
    gen = load_generator("toy")
    want = gen.generate(["a red circle"] * 3, 2, noise=initial_noise(gen, [7, 8, 9]))
    for r, img in zip(man["images"], want):
        assert _png_equals(tmp_path / r["file"], img), r


def test_sample_tiny_sd_with_lora_and_prompt_file(tmp_path):
    model = tmp_path / "sd"
    build_tiny_sd(model)
    gen = load_generator(model)
    gen.add_lora(rank=2)
    with torch.no_grad():
        for n, p in gen.denoiser.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    gen.save_lora(tmp_path / "lora")
    prompts = ["a red cat", "two blue dogs"]
    (tmp_path / "p.txt").write_text("a red cat\n\n# a comment\ntwo blue dogs\n")
    out = tmp_path / "out"
    assert main(["sample", "--model", str(model), "--lora", str(tmp_path / "lora"), "--prompts",
                 str(tmp_path / "p.txt"), "--steps", "3", "--guidance", "3", "--out", str(out)]) == 0
    man = json.loads((out / "manifest.json").read_text())
    assert man["adapter"] == "sd" and man["guidance_scale"] == 3.0 and man["lora"] == str(tmp_path / "lora")
    assert [r["prompt"] for r in man["images"]] == prompts and (man["height"], man["width"]) == (16, 16)
    want = gen.generate(prompts, 3, noise=initial_noise(gen, [0, 1]), guidance_scale=3.0)
    for r, img in zip(man["images"], want):
        assert _png_equals(out / r["file"], img), r


@pytest.mark.parametrize("argv,msg", [
    (["--model", "/no/such/model"], "cannot read model_index.json of '/no/such/model'"),
    (["--model", "toy", "--prompts", "/no/prompts.txt"], "prompt file not found"),
    (["--model", "toy", "--lora", "/no/lora"], "LoRA directory or file not found"),
])
def test_sample_bad_inputs_exit_2_with_message(tmp_path, capsys, argv, msg):
    base = ["sample", "--out", str(tmp_path), "--steps", "1"]
    if "--prompts" not in argv:
        base += ["--prompt", "a red circle"]
    assert main(base + argv) == 2
    assert msg in capsys.readouterr().err


def test_sample_writes_mp4s_for_a_video_model(tmp_path, capsys):
    from rewardflow.io.video import load_video

    out = tmp_path / "s"
    assert main(["sample", "--model", "toy_video", "--prompt", "a red circle moving left", "--n-per-prompt", "2",
                 "--steps", "2", "--out", str(out)]) == 0
    man = json.loads((out / "manifest.json").read_text())
    assert man["media"] == "video" and man["frames"] == 4 and man["fps"] == 8.0
    assert [r["file"] for r in man["images"]] == ["00000_00.mp4", "00000_01.mp4"]
    assert load_video(out / "00000_01.mp4").shape == (4, 3, 32, 32)
    assert "2 videos (mp4)" in capsys.readouterr().out
