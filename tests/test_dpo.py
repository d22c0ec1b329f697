"""Flow-DPO / Diffusion-DPO: one loss over the parametrization, checked by hand on an epsilon and a flow generator;
pair builders; offline preference datasets."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

import rewardflow.align.methods.dpo as dpo_mod
from rewardflow.align.common.samples import best_worst_pairs
from rewardflow.align.methods.dpo import (
    DiffusionDPO,
    DPOConfig,
    FlowDPO,
    PreferencePairs,
    dpo_loss,
)
from rewardflow.align.method import MethodContext
from rewardflow.toy.generator import ToyGenerator
from tests.conftest import make_diffusion_gen
from tests.trainer_utils import Brightness, make_trainer, mean_reward

PROMPTS = ["a red circle", "two blue squares"]


def test_dpo_loss_hand_value():
    ew, rw = torch.tensor([0.1, 0.3]), torch.tensor([0.2, 0.2])
    el, rl = torch.tensor([0.5, 0.1]), torch.tensor([0.4, 0.3])
    loss, d = dpo_loss(ew, el, rw, rl, beta=10.0)
    # inside = -5 * ((ew - rw) - (el - rl)) = [1.0, -1.5]; loss = mean(-log sigmoid(inside))
    want = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(1.5))) / 2
    assert loss.item() == pytest.approx(want, rel=1e-6)
    assert d["implicit_acc"] == 0.5 and d["mse_w_policy"] == pytest.approx(0.2)


def _perturbed(gen):
    """Full fine-tuning: a frozen copy is the reference, then the policy moves away from it."""
    gen.snapshot_reference()
    gen.denoiser.requires_grad_(True)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in gen.denoiser.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return gen


def _hand_errors(gen, unet, x0, noise, t, prompts):
    """Independent computation straight from the math (docs/algorithms.md#ddim-eta, docs/algorithms.md#rectified-flow), calling the UNet directly."""
    emb = gen.pipe.encode_prompt(prompts)
    if gen.parametrization == "flow":
        s = t.view(-1, 1, 1, 1)
        x_t, target, model_t = (1 - s) * x0 + s * noise, noise - x0, t * 1000
    else:
        ab = gen.pipe.scheduler.alphas_cumprod[t.long()].float().view(-1, 1, 1, 1)
        x_t, target, model_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise, noise, t
    out = gen.pipe.denoise(x_t, model_t, emb, unet=unet)
    return ((out - target) ** 2).flatten(1).mean(1)


@pytest.mark.parametrize("kind", ["epsilon", "flow"])
@pytest.mark.parametrize("schedule", ["constant", "one_minus_t_sq"])
def test_method_loss_equals_hand_computation(tiny_pipe_dir, monkeypatch, kind, schedule):
    gen = _perturbed(make_diffusion_gen(tiny_pipe_dir) if kind == "epsilon" else ToyGenerator.from_pretrained(tiny_pipe_dir))
    ctx = MethodContext(generator=gen, reward=Brightness())
    cls = DiffusionDPO if kind == "epsilon" else FlowDPO
    cfg = DPOConfig(beta=50.0, beta_schedule=schedule)
    if kind == "epsilon" and schedule == "one_minus_t_sq":
        with pytest.raises(ValueError, match="flow"):
            cls(cfg, ctx)
        return
    m = cls(cfg, ctx)
    shape = (2, *gen.latent_shape)
    x_w, x_l, noise = torch.randn(shape), torch.randn(shape), torch.randn(shape)
    t = torch.tensor([0.3, 0.8]) if kind == "flow" else torch.tensor([100.0, 700.0])
    monkeypatch.setattr(dpo_mod, "draw_noise_and_t", lambda g, x, rng: (noise, t))
    loss, diag = m.loss({"prompts": PROMPTS, "x0_w": x_w, "x0_l": x_l}, step=0)
    with torch.no_grad():
        ew, el = (_hand_errors(gen, gen.denoiser, x, noise, t, PROMPTS) for x in (x_w, x_l))
        rw, rl = (_hand_errors(gen, gen._reference, x, noise, t, PROMPTS) for x in (x_w, x_l))
    beta = 50.0 * (1 - t) ** 2 if schedule == "one_minus_t_sq" else torch.full((2,), 50.0)
    inside = -0.5 * beta * ((ew - rw) - (el - rl))
    want = F.softplus(-inside).mean()
    assert abs(float(inside.mean())) > 1e-4  # the policy really differs from the reference
    assert loss.item() == pytest.approx(want.item(), rel=1e-4)
    assert diag["mse_w_ref"] == pytest.approx(rw.mean().item(), rel=1e-4)
    loss.backward()  # gradients reach the policy, not the frozen reference
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in gen.denoiser.parameters())
    assert all(p.grad is None for p in gen._reference.parameters())


def test_best_worst_pairs_on_hand_made_scores():
    nan = float("nan")
    s = torch.tensor([0.1, 0.5, 0.3, nan, 0.2, 0.2, 1.0, nan, nan, 0.9, 0.0, 0.4])
    assert best_worst_pairs(s, 3) == [(1, 0), (9, 10)]  # tie group and single-finite group give no pair
    assert best_worst_pairs(s, 3, min_gap=0.5) == [(9, 10)]
    with pytest.raises(ValueError, match="group"):
        best_worst_pairs(s[:5], 3)


def test_on_policy_collect_pairs_best_and_worst(tiny_pipe_dir):
    gen = ToyGenerator.from_pretrained(tiny_pipe_dir)
    gen.add_lora(rank=2)
    reward = Brightness()
    m = FlowDPO(DPOConfig(num_samples_per_prompt=3), MethodContext(generator=gen, reward=reward,
                                                                   rng=torch.Generator().manual_seed(0),
                                                                   sample_steps=2))
    (batch,) = m.collect(PROMPTS, step=0)
    rw = reward(gen.decode(batch["x0_w"]), batch["prompts"])
    rl = reward(gen.decode(batch["x0_l"]), batch["prompts"])
    assert batch["prompts"] == PROMPTS and (rw > rl).all()


def _write_png(path, rgb):
    import numpy as np
    from PIL import Image

    Image.fromarray(np.full((32, 32, 3), rgb, dtype=np.uint8)).save(path)


def test_offline_pairs_from_jsonl_images_and_latents(tmp_path, tiny_pipe_dir):
    from safetensors.torch import save_file

    gen = ToyGenerator.from_pretrained(tiny_pipe_dir)
    _write_png(tmp_path / "w.png", (255, 0, 0))
    _write_png(tmp_path / "l.png", (0, 0, 255))
    lat = torch.randn(*gen.latent_shape)
    save_file({"latent": lat}, str(tmp_path / "w.safetensors"))
    rows = [{"prompt": "a red circle", "chosen": "w.png", "rejected": "l.png"},
            {"prompt": "a tie", "image_0": "w.png", "image_1": "l.png", "label_0": 0.5},
            {"prompt": "two blue squares", "image_0": "l.png", "image_1": "w.safetensors", "label_0": 0}]
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    data = PreferencePairs(str(tmp_path / "pairs.jsonl"))
    assert len(data) == 2  # the tie is dropped
    m = FlowDPO(DPOConfig(pairs="offline", dataset=str(tmp_path / "pairs.jsonl")), MethodContext(generator=gen, reward=None))
    (b,) = m.collect(["ignored"] * 2, step=0)
    got = dict(zip(b["prompts"], zip(b["x0_w"], b["x0_l"])))
    red = torch.zeros(1, 3, 32, 32)
    red[:, 0] = 1
    assert torch.allclose(got["a red circle"][0], gen.encode_images(red)[0], atol=1e-6)
    assert torch.equal(got["two blue squares"][0], lat)  # label_0 = 0: image_1 (the latent) wins
    assert m.cursor == 2 and m.state_dict()["cursor"] == 2
    # Pick-a-Pic v2's own parquet columns: jpg_0 / jpg_1 with label_0, the caption as the prompt
    (tmp_path / "pickapic.jsonl").write_text(json.dumps({"caption": "a cat", "jpg_0": "l.png", "jpg_1": "w.png",
                                                         "label_0": 0.0}))
    assert PreferencePairs(str(tmp_path / "pickapic.jsonl")).pairs == [  # paths resolve against the file's folder
        ("a cat", str(tmp_path / "w.png"), str(tmp_path / "l.png"))]


def test_offline_pairs_from_a_folder_of_pickapic_parquet_shards(tmp_path, tiny_pipe_dir):
    """A hub download of Pick-a-Pic v2 (data/*.parquet with jpg_0 / jpg_1 bytes, label_0, caption): read as it is,
    ties dropped, images decoded only when their pair is used."""
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    def png(rgb):
        buf = io.BytesIO()
        Image.fromarray(np.full((32, 32, 3), rgb, dtype=np.uint8)).save(buf, format="PNG")
        return buf.getvalue()

    red, blue = png((255, 0, 0)), png((0, 0, 255))
    (tmp_path / "data").mkdir()
    pq.write_table(pa.table({"caption": ["a red circle", "a tie"], "jpg_0": [blue, red], "jpg_1": [red, blue],
                             "label_0": [0.0, 0.5], "label_1": [1.0, 0.5]}), tmp_path / "data" / "train-0.parquet")
    pq.write_table(pa.table({"caption": ["two blue squares"], "jpg_0": [blue], "jpg_1": [red],
                             "label_0": [1.0], "label_1": [0.0]}), tmp_path / "data" / "train-1.parquet")
    data = PreferencePairs(str(tmp_path))
    assert [p for p, _, _ in data.pairs] == ["a red circle", "two blue squares"]
    gen = ToyGenerator.from_pretrained(tiny_pipe_dir)
    red_t = torch.zeros(1, 3, 32, 32)
    red_t[:, 0] = 1
    _, w, l = data.pairs[0]  # label_0 = 0: jpg_1 (red) wins
    assert torch.allclose(data.load_item(w, gen), gen.encode_images(red_t)[0], atol=1e-6)
    assert not torch.allclose(data.load_item(l, gen), gen.encode_images(red_t)[0], atol=1e-3)


def test_offline_dataset_errors(tmp_path, tiny_pipe_dir):
    with pytest.raises(FileNotFoundError, match="not found"):
        PreferencePairs(str(tmp_path / "missing.jsonl"))
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": "p", "winner": "a.png"}))
    with pytest.raises(ValueError, match="no preference columns; expected caption, jpg_0, jpg_1, label_0"):
        PreferencePairs(str(tmp_path / "bad.jsonl"))
    gen = ToyGenerator.from_pretrained(tiny_pipe_dir)
    with pytest.raises(ValueError, match="dataset=PATH"):
        FlowDPO(DPOConfig(pairs="offline"), MethodContext(generator=gen, reward=None))


def test_a_few_dpo_steps_raise_the_reward(tmp_path, tiny_pipe_dir):
    reward = Brightness()
    tr = make_trainer(tmp_path, tiny_pipe_dir, "flow_dpo", reward=reward, max_steps=6, batch_size=4, lr=1e-3,
                      lora_rank=0, beta=2000.0, num_samples_per_prompt=4, sample_from="policy")
    prompts = ["a red circle", "two blue squares", "a green triangle", "a yellow square"] * 2
    before = mean_reward(tr.gen, reward, prompts)
    tr.train()
    assert mean_reward(tr.gen, reward, prompts) > before + 0.005  # measured: 0.4927 -> 0.5050
