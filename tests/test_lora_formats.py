"""LoRA files in the kohya / A1111 layout load through diffusers' conversion (`sample --lora`, `init_lora`) and give
the images of the same LoRA in the diffusers layout; training continues from an existing LoRA."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from rewardflow.cli import main
from rewardflow.pipelines.registry import load_generator
from trainer_utils import make_trainer, write_train_yaml


@pytest.fixture(scope="module")
def trained_lora(tmp_path_factory, tiny_pipe_dir):
    """A toy LoRA trained for 2 steps (diffusers layout, as training writes it) and the same LoRA written in the
    kohya-ss layout with diffusers' own converter (``convert_state_dict_to_kohya``), plus a text-encoder pair as
    A1111 files often carry."""
    from diffusers.utils import convert_state_dict_to_kohya
    from peft.utils import get_peft_model_state_dict

    d = tmp_path_factory.mktemp("lora")
    cfg = write_train_yaml(d / "c.yaml", "draft", tiny_pipe_dir, d / "run", lr=0.05, lora_rank=4, lora_alpha=2.0)
    assert main(["train", str(cfg), "-q"]) == 0
    gen = load_generator(tiny_pipe_dir)
    gen.load_lora(d / "run" / "final", trainable=False)
    peft_sd = get_peft_model_state_dict(gen.denoiser)
    kohya = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in peft_sd.items()})
    for k in [k for k in kohya if k.endswith(".alpha")]:
        kohya[k] = torch.tensor(2.0)  # this LoRA's alpha (the converter writes the rank)
    assert all(k.startswith("lora_unet_") for k in kohya) and any(k.endswith(".lora_down.weight") for k in kohya)
    te = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    kohya.update({f"{te}.lora_down.weight": torch.zeros(4, 32), f"{te}.lora_up.weight": torch.zeros(32, 4),
                  f"{te}.alpha": torch.tensor(4.0)})
    save_file({k: v.contiguous() for k, v in kohya.items()}, str(d / "kohya.safetensors"))
    return d / "run" / "final", d / "kohya.safetensors"


def _pixels(folder):
    return [np.asarray(Image.open(f)) for f in sorted(folder.glob("*.png"))]


def test_kohya_lora_samples_the_same_images_as_the_diffusers_file(tmp_path, tiny_pipe_dir, trained_lora):
    diffusers_dir, kohya_file = trained_lora
    common = ["sample", "--model", str(tiny_pipe_dir), "--prompt", "a red circle", "--n-per-prompt", "3",
              "--steps", "2", "-q"]
    assert main(common + ["--out", str(tmp_path / "base")]) == 0
    assert main(common + ["--lora", str(diffusers_dir), "--out", str(tmp_path / "diffusers")]) == 0
    assert main(common + ["--lora", str(kohya_file), "--out", str(tmp_path / "kohya")]) == 0
    base, want, got = (_pixels(tmp_path / n) for n in ("base", "diffusers", "kohya"))
    assert len(got) == 3 and all(np.array_equal(a, b) for a, b in zip(want, got))
    assert not all(np.array_equal(a, b) for a, b in zip(base, want))  # the LoRA changes the images
    man = json.loads((tmp_path / "kohya" / "manifest.json").read_text())
    assert man["lora"] == str(kohya_file)
    gen = load_generator(tiny_pipe_dir)
    with pytest.warns(UserWarning, match=r"only the unet LoRA is loaded; the weights for \['text_encoder'\]"):
        gen.load_lora(kohya_file, trainable=False)
    assert gen.denoiser.peft_config["default"].lora_alpha == 2.0 and gen.denoiser.peft_config["default"].r == 4


def test_init_lora_continues_training_from_a_kohya_file(tmp_path, tiny_pipe_dir, trained_lora):
    diffusers_dir, kohya_file = trained_lora
    ref = load_generator(tiny_pipe_dir)
    ref.load_lora(diffusers_dir, trainable=False)
    tr = make_trainer(tmp_path, tiny_pipe_dir, "draft", init_lora=str(kohya_file), max_steps=1, lr=1e-3)
    assert "LoRA from" in tr.describe() and "r=4 alpha=2" in tr.describe()
    want = dict(ref.denoiser.named_parameters())
    lora = {n: p for n, p in tr.gen.denoiser.named_parameters() if p.requires_grad}
    assert lora and all("lora_" in n for n in lora) and len(lora) == len(tr.params)
    for n, p in lora.items():  # training starts from the file's weights
        torch.testing.assert_close(p.detach(), want[n].detach(), rtol=0, atol=0)
    tr.train()
    moved = [n for n, p in lora.items() if not torch.equal(p.detach(), want[n].detach())]
    assert moved  # ... and continues from them
    assert (tmp_path / "final" / "pytorch_lora_weights.safetensors").is_file()


def test_init_lora_errors(tmp_path, tiny_pipe_dir, capsys):
    cfg = write_train_yaml(tmp_path / "c.yaml", "draft", tiny_pipe_dir, tmp_path / "run")
    assert main(["train", str(cfg), f"init_lora={tmp_path / 'none.safetensors'}", "-q"]) == 2
    assert "init_lora: LoRA directory or file not found" in capsys.readouterr().err
    assert main(["train", str(cfg), "init_lora=x.safetensors", "lora_rank=0", "--print-config"]) == 2
    assert "init_lora continues a LoRA: lora_rank must be > 0" in capsys.readouterr().err


def test_saved_weights_follow_the_umask(tmp_path, tiny_pipe_dir, trained_lora):
    """safetensors' writer creates 0600 files; saved LoRAs and checkpoints get the mode open() would give."""
    import os
    import stat

    from rewardflow.io.paths import current_umask

    run = trained_lora[0].parent
    want = 0o666 & ~current_umask()
    files = [run / "final" / "pytorch_lora_weights.safetensors", *run.glob("checkpoints/step_*/*.safetensors")]
    assert len(files) == 3  # final/ + the checkpoint's trainable weights and its loadable LoRA
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == want, f
    old = os.umask(0o002)
    try:
        gen = load_generator(tiny_pipe_dir)
        gen.add_lora(rank=2)
        f = gen.save_lora(tmp_path / "lora")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o664
