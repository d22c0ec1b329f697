"""The toy text-to-video generator: pipeline save/load through the adapter, ODE sampling equal to the pipeline's own
loop, exact frame-subset decoding, editing-mode encode, the training recipe and its command."""

import pytest
import torch

FRAMES = 4


@pytest.fixture(scope="module")
def tiny_video_dir(tmp_path_factory):
    from rewardflow.toy.video_pipeline import ToyVideoFlowPipeline

    d = tmp_path_factory.mktemp("toy_video_pipe")
    ToyVideoFlowPipeline.from_config_dict(frames=FRAMES, width=32, channels=(16, 32, 32), seed=0).save_pretrained(str(d))
    return d


@pytest.fixture
def vgen(tiny_video_dir):
    from rewardflow.pipelines.registry import load_generator

    return load_generator(str(tiny_video_dir))


PROMPTS = ["a red circle moving left", "a blue square moving up"]


def test_saved_pipeline_loads_through_the_registry(tiny_video_dir, vgen):
    import json

    from rewardflow.toy.video_generator import ToyVideoGenerator

    assert json.loads((tiny_video_dir / "model_index.json").read_text())["_class_name"] == "ToyVideoFlowPipeline"
    assert isinstance(vgen, ToyVideoGenerator) and vgen.modality == "video"
    assert vgen.latent_shape == (FRAMES * 12, 16, 16) and vgen.num_frames == FRAMES
    assert vgen.parametrization == "flow"
    # the video words are in the vocabulary (not <unk>)
    ids = vgen.pipe.tokenizer(["moving up down"])["input_ids"][0]
    assert vgen.pipe.tokenizer.unk_token_id not in ids


def test_adapter_ode_sample_equals_pipeline_call(vgen):
    noise = torch.randn(2, *vgen.latent_shape, generator=torch.Generator().manual_seed(3))
    ours = vgen.generate(PROMPTS, steps=4, noise=noise)
    ref = vgen.pipe(PROMPTS, num_inference_steps=4, latents=noise.clone())
    assert ours.shape == (2, FRAMES, 3, 32, 32)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    # with classifier-free guidance too
    ours = vgen.generate(PROMPTS, steps=3, noise=noise, guidance_scale=2.5)
    ref = vgen.pipe(PROMPTS, num_inference_steps=3, latents=noise.clone(), guidance_scale=2.5)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    np_out = vgen.pipe(PROMPTS[:1], num_inference_steps=2, latents=noise[:1].clone(), output_type="np")
    assert np_out.shape == (1, FRAMES, 32, 32, 3) and np_out.dtype.name == "uint8"


def test_frame_subset_decode_equals_frames_of_full_decode(vgen):
    lat = torch.randn(2, *vgen.latent_shape, requires_grad=True)
    full = vgen.decode(lat)
    for idx in ([0], [3, 1], [1, 2, 3]):
        torch.testing.assert_close(vgen.decode(lat, frames=idx), full[:, idx], atol=0, rtol=0)
    # differentiable, and only the selected frames' latent channels receive gradient
    vgen.decode(lat, frames=[2]).sum().backward()
    g = lat.grad.view(2, FRAMES, 12, 16, 16).abs().flatten(2).sum(-1)
    assert (g[:, 2] > 0).all() and (g[:, [0, 1, 3]] == 0).all()
    with pytest.raises(ValueError, match="frame indices"):
        vgen.decode(lat, frames=[FRAMES])


def test_encode_is_the_exact_inverse_of_decode(vgen):
    from rewardflow.toy.video import render_clips

    import numpy as np

    vids = render_clips(PROMPTS, frames=FRAMES, rng=np.random.default_rng(0))
    lat = vgen.encode(vids)
    assert lat.shape == (2, *vgen.latent_shape)
    torch.testing.assert_close(vgen.decode(lat), vids, atol=1e-6, rtol=0)
    # frame t of the video is channels t*12..t*12+11 of the latent
    torch.testing.assert_close(lat[:, 12:24], torch.nn.functional.pixel_unshuffle(vids[:, 1] * 2 - 1, 2))
    with pytest.raises(ValueError, match=r"expected videos \[B, 4, 3, H, W\]"):
        vgen.encode(vids[:, :3])


def test_missing_directory_names_the_fix(tmp_path):
    from rewardflow.toy.video_generator import ToyVideoGenerator

    with pytest.raises(FileNotFoundError, match="toy train-video-generator"):
        ToyVideoGenerator.from_pretrained(tmp_path / "nope")


def test_train_command_saves_a_loadable_pipeline(tmp_path, monkeypatch):
    import json

    from rewardflow.cli import main
    from rewardflow.pipelines.registry import load_generator

    out = tmp_path / "gen"
    assert main(["toy", "train-video-generator", "--out", str(out), "--steps", "2", "--batch", "2",
                 "--frames", "2"]) == 0
    meta = json.loads((out / "training.json").read_text())
    assert meta["steps"] == 2 and len(meta["log"]) == 2 and all(r["loss"] > 0 for r in meta["log"])
    gen = load_generator(str(out))
    assert gen.num_frames == 2 and gen.generate(PROMPTS[:1], steps=1).shape == (1, 2, 3, 32, 32)


def test_noisy_captions_are_false_minimal_edits():
    import numpy as np

    from rewardflow.toy.video import parse_video_caption
    from rewardflow.toy.video_gen_train import _noisy_caption, train_captions

    rng = np.random.default_rng(0)
    assert len(train_captions("train")) + len(train_captions("heldout")) == 84
    cap = "a red circle moving left"
    seen = {"direction": 0, "content": 0}
    for _ in range(40):
        n = parse_video_caption(_noisy_caption(cap, rng))
        true = parse_video_caption(cap)
        assert (n.obj, n.direction) != (true.obj, true.direction)
        seen["direction" if n.obj == true.obj else "content"] += 1
    assert seen["direction"] > 5 and seen["content"] > 5


def test_shipped_generator_loads_by_name():
    from rewardflow.pipelines.registry import load_generator

    gen = load_generator("toy_video", adapter="toy_video")
    assert gen.modality == "video" and gen.num_frames == 4
    v = gen.generate(["a red circle moving left"], steps=2, noise=torch.zeros(1, *gen.latent_shape))
    assert v.shape == (1, 4, 3, 32, 32) and 0 <= float(v.min()) and float(v.max()) <= 1


def test_train_command_continues_from_a_saved_pipeline(tmp_path, tiny_video_dir, capsys):
    """--init-from starts from the saved weights (the tiny architecture is kept, not the default one) and a frame
    count that does not match the saved UNet is refused before training."""
    import json

    from safetensors.torch import load_file

    from rewardflow.cli import main

    out = tmp_path / "cont"
    assert main(["toy", "train-video-generator", "--init-from", str(tiny_video_dir), "--out", str(out),
                 "--steps", "1", "--batch", "2", "--frames", str(FRAMES), "--warmup", "1"]) == 0
    meta = json.loads((out / "training.json").read_text())
    assert meta["init_from"] == str(tiny_video_dir) and meta["warmup"] == 1
    cfg = json.loads((out / "unet" / "config.json").read_text())
    assert list(cfg["block_out_channels"]) == [16, 32, 32]
    before = load_file(str(tiny_video_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    after = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    # one EMA update from the saved weights: close to them, not a fresh random init
    k = "conv_in.weight"
    assert not torch.equal(before[k].float(), after[k].float())
    assert (before[k].float() - after[k].float()).abs().max() < 0.05 * before[k].float().abs().max()
    capsys.readouterr()
    assert main(["toy", "train-video-generator", "--init-from", str(tiny_video_dir), "--out", str(tmp_path / "x"),
                 "--steps", "1", "--batch", "2", "--frames", "2"]) == 2
    assert "generates 4 frames but frames=2; pass frames=4" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
