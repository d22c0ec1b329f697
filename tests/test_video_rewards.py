"""Video rewards: segmental (SegVR + TAR), VideoReward (Qwen2-VL, tiny random config), MJ-Video-style MoE."""

import json
import math

import pytest
import torch

from rewardflow.rewards.base import load_reward
from rewardflow.testing.tiny_rewards import QWEN2VL_SPECIALS, tiny_qwen2vl, tiny_qwen2vl_tokenizer

# ----------------------------------------------------------------------------------------------------------------
# Segmental video reward
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture
def seg(tiny_reward_dir):
    return load_reward("segmental(toy_clip)", selection="first", inner_kwargs={"path": str(tiny_reward_dir)})


def test_segmental_first_frames_weights_and_score(seg):
    video = torch.rand(2, 16, 3, 32, 32)
    prompts = ["a red circle", "a blue square"]
    out = seg.all_heads(video, prompts)
    assert seg.name == "segmental(toy_clip)" and seg.modality == "video" and seg.differentiable
    assert seg.last.indices.tolist() == [0, 4, 8, 12]
    # gamma_f = exp(-lambda |f - floor(F/2)|), lambda = 1, F = 16 -> centre 8; not renormalised
    want_w = torch.tensor([math.exp(-8), math.exp(-4), 1.0, math.exp(-4)])
    torch.testing.assert_close(seg.last.weights, want_w)
    inner = seg.image_reward
    per = torch.stack([inner(video[:, f], prompts) for f in (0, 4, 8, 12)], 1)  # [B, 4]
    torch.testing.assert_close(seg.last.frame_scores["score"], per)
    torch.testing.assert_close(out["score"], (per * want_w).sum(1) / 4)


def test_segmental_normalized_and_lambda(tiny_reward_dir):
    r = load_reward("segmental(toy_clip)", selection="first", lam=0.5, normalize=True, segments=2,
                    inner_kwargs={"path": str(tiny_reward_dir)})
    video = torch.rand(1, 8, 3, 32, 32)
    s = r(video, ["a red circle"])
    w = torch.exp(-0.5 * torch.tensor([4.0, 0.0]))  # frames 0 and 4 of 8, centre 4
    per = r.last.frame_scores["score"][0]
    torch.testing.assert_close(s[0], (per * w).sum() / w.sum())


def test_segmental_tsn_indices_inside_segments(tiny_reward_dir):
    r = load_reward("segmental(toy_clip)", segments=4, seed=3, inner_kwargs={"path": str(tiny_reward_dir)})
    seen = set()
    for _ in range(20):
        idx = r.select(16)
        assert [int(i) // 4 for i in idx] == [0, 1, 2, 3]
        seen.add(tuple(idx.tolist()))
    assert len(seen) > 1  # random within segments
    r2 = load_reward("segmental(toy_clip)", segments=4, seed=3, inner_kwargs={"path": str(tiny_reward_dir)})
    r3 = load_reward("segmental(toy_clip)", segments=4, seed=3, inner_kwargs={"path": str(tiny_reward_dir)})
    assert r2.select(16).tolist() == r3.select(16).tolist()


def test_segmental_gradients_reach_only_selected_frames(seg):
    video = torch.rand(1, 16, 3, 32, 32, requires_grad=True)
    seg(video, ["a red circle"]).sum().backward()
    g = video.grad.abs().sum((0, 2, 3, 4))
    assert set(torch.nonzero(g).flatten().tolist()) == {0, 4, 8, 12}


def test_segmental_errors(tiny_reward_dir):
    with pytest.raises(KeyError, match="unknown reward wrapper 'nope'"):
        load_reward("nope(toy_clip)")
    with pytest.raises(KeyError, match="unknown reward"):
        load_reward("segmental(not_a_reward)")
    r = load_reward("segmental(toy_clip)", segments=4, inner_kwargs={"path": str(tiny_reward_dir)})
    with pytest.raises(ValueError, match="cannot be split into 4 segments"):
        r(torch.rand(1, 3, 3, 32, 32), ["a red circle"])
    with pytest.raises(ValueError, match=r"\[B, T, 3, H, W\]"):
        r(torch.rand(1, 3, 32, 32), ["a red circle"])
    with pytest.raises(ValueError, match="lifts an image reward"):
        from rewardflow.rewards.segmental import SegmentalVideoReward

        SegmentalVideoReward(r)


def test_segmental_black_box_inner_is_not_differentiable():
    r = load_reward("segmental(toy_oracle)", selection="first")
    assert not r.differentiable and r.heads == ("score", "pass")
    from rewardflow.toy import world

    import numpy as np

    img = torch.from_numpy(world.render("a red circle", rng=np.random.default_rng(0))).permute(2, 0, 1) / 255
    video = img.expand(8, -1, -1, -1)[None]
    out = r.all_heads(video, ["a red circle"])
    w = torch.exp(-torch.tensor([4.0, 2.0, 0.0, 2.0]))  # frames 0, 2, 4, 6 of 8
    torch.testing.assert_close(out["pass"], (w.sum() / 4).view(1))


# ----------------------------------------------------------------------------------------------------------------
# VideoReward
# ----------------------------------------------------------------------------------------------------------------

NORM_CFG = {"VQ_mean": 0.5, "VQ_std": 2.0, "MQ_mean": -0.25, "MQ_std": 0.5, "TA_mean": 1.5, "TA_std": 4.0}


@pytest.fixture(scope="module")
def videoreward_ckpt(tmp_path_factory):
    """A tiny Qwen2-VL saved as the base model, plus a VideoAlign-layout reward checkpoint: model_config.json and
    checkpoint-<step>/ with a peft LoRA adapter and non_lora_state_dict.safetensors in the transformers-4.45 key
    layout (visual.*, model.embed_tokens), with rm_head."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file

    from rewardflow.rewards.videoreward import SPECIAL_TOKENS

    root = tmp_path_factory.mktemp("videoreward")
    tok = tiny_qwen2vl_tokenizer()
    base = tiny_qwen2vl(tok)
    base.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    # "training": add the reward tokens, resize, LoRA on the LLM, perturb the vision tower, a random rm_head
    trained = tiny_qwen2vl(tok)
    trained.load_state_dict(base.state_dict())
    tok.add_special_tokens({"additional_special_tokens": QWEN2VL_SPECIALS[2:] + list(SPECIAL_TOKENS)})
    trained.resize_token_embeddings(len(tok))
    peft_model = get_peft_model(trained, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                    init_lora_weights=False))
    ckpt = root / "ckpt" / "checkpoint-100"
    peft_model.save_pretrained(ckpt)
    merged = peft_model.merge_and_unload()
    with torch.no_grad():
        for p in merged.model.visual.parameters():
            p.add_(0.01 * torch.randn_like(p))
    rm_head = torch.randn(1, 32)
    old = {"rm_head.weight": rm_head, "model.embed_tokens.weight": merged.model.language_model.embed_tokens.weight}
    old.update({f"visual.{k}": v for k, v in merged.model.visual.state_dict().items()})
    save_file({k: v.contiguous() for k, v in old.items()}, str(ckpt / "non_lora_state_dict.safetensors"))
    (root / "ckpt" / "checkpoint-50").mkdir()  # an older step: the loader takes the largest
    tok.save_pretrained(ckpt)
    (root / "ckpt" / "model_config.json").write_text(json.dumps({
        "data_config": {"fps": 2.0, "num_frames": None, "max_frame_pixels": 56 * 56, "eval_dim": ["VQ", "MQ", "TA"],
                        "prompt_template_type": "detailed_special", "sample_type": "uniform"},
        "model_config": {"model_name_or_path": str(root / "base"), "output_dim": 1, "reward_token": "special"},
        "peft_lora_config": {"lora_r": 4, "lora_alpha": 8},
        "inference_config": NORM_CFG}))
    return {"dir": root / "ckpt", "merged": merged, "rm_head": rm_head, "tok": tok}


def test_patchify_matches_transformers_video_processor():
    from transformers import Qwen2VLVideoProcessor

    from rewardflow.rewards.videoreward import preprocess_video

    torch.manual_seed(0)
    frames = torch.randint(0, 256, (5, 3, 56, 84)).float() / 255  # odd T: the last frame is repeated
    proc = Qwen2VLVideoProcessor(min_pixels=56 * 56, max_pixels=56 * 84, cap_pixels_per_frame=False)
    ref = proc(videos=[(frames * 255).round().to(torch.uint8)], return_tensors="pt")
    rows, grid = preprocess_video(frames, min_pixels=56 * 56, max_pixels=56 * 84)
    assert grid.tolist() == ref["video_grid_thw"][0].tolist() == [3, 4, 6]
    torch.testing.assert_close(rows, ref["pixel_values_videos"], atol=1e-5, rtol=0)


def test_preprocess_resize_to_multiples_of_28_close_to_processor():
    from transformers import Qwen2VLVideoProcessor

    from rewardflow.rewards.videoreward import preprocess_video

    torch.manual_seed(0)
    frames = torch.nn.functional.interpolate(torch.rand(4, 3, 8, 10), size=(50, 70), mode="bilinear")
    frames = (frames * 255).round() / 255
    proc = Qwen2VLVideoProcessor(min_pixels=28 * 28, max_pixels=56 * 84, cap_pixels_per_frame=False)
    ref = proc(videos=[(frames * 255).round().to(torch.uint8)], return_tensors="pt")
    rows, grid = preprocess_video(frames, min_pixels=28 * 28, max_pixels=56 * 84)
    assert grid.tolist() == ref["video_grid_thw"][0].tolist() == [2, 4, 4]  # 50x70 -> 56x56 (round(2.5) = 2)
    # the processor resizes uint8 frames (rounding to 1/255) -> about 1/255/std in normalised units
    assert (rows - ref["pixel_values_videos"]).abs().max() < 0.05


def _independent_heads(ckpt, clip_u8, prompt, pixels=56 * 56):
    """(VQ, MQ, TA) normalised, from the merged tiny Qwen2-VL, the transformers video processor on uint8 frames of
    a size it keeps, the chat text and rm_head (the official VideoAlign inference path)."""
    from transformers import Qwen2VLVideoProcessor

    from rewardflow.rewards.videoreward import build_chat_text

    merged, tok, w = ckpt["merged"], ckpt["tok"], ckpt["rm_head"]
    proc = Qwen2VLVideoProcessor(min_pixels=pixels, max_pixels=pixels, cap_pixels_per_frame=False)
    vin = proc(videos=[clip_u8], return_tensors="pt")
    n = int(vin["video_grid_thw"].prod()) // 4
    ids = tok(build_chat_text(prompt, n), return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        h = merged.model(input_ids=ids, pixel_values_videos=vin["pixel_values_videos"],
                         video_grid_thw=vin["video_grid_thw"],
                         mm_token_type_ids=(ids == merged.config.video_token_id).int() * 2).last_hidden_state[0]
    raw = []
    for t in ("<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>"):
        (pos,) = torch.nonzero(ids[0] == tok.convert_tokens_to_ids(t)).flatten().tolist()
        raw.append(float(h[pos] @ w[0]))
    return [(raw[0] - 0.5) / 2.0, (raw[1] + 0.25) / 0.5, (raw[2] - 1.5) / 4.0]


def test_videoreward_loads_official_layout_and_matches_independent_head(videoreward_ckpt):
    from rewardflow.rewards.videoreward import VideoReward

    r = VideoReward.from_pretrained(videoreward_ckpt["dir"], min_pixels=56 * 56, video_fps=8.0)
    assert r.max_pixels == 56 * 56 and r.norm == NORM_CFG and r.primary_head == "Overall"
    torch.manual_seed(1)
    video = torch.randint(0, 256, (2, 8, 3, 56, 56)).float() / 255
    prompts = ["a red circle moving left", "a blue square"]
    out = r.all_heads(video, prompts)

    # independent: fps 2 at 8 fps over 8 frames -> 4 frames round(linspace(0, 7, 4)) = [0, 2, 5, 7]
    for b in range(2):
        clip = (video[b, [0, 2, 5, 7]] * 255).round().to(torch.uint8)
        z = _independent_heads(videoreward_ckpt, clip, prompts[b])
        for k, v in zip(("VQ", "MQ", "TA"), z):
            assert out[k][b].item() == pytest.approx(v, abs=1e-4)
        assert out["Overall"][b].item() == pytest.approx(sum(z), abs=1e-4)
    torch.testing.assert_close(r(video, prompts), out["Overall"])


def test_videoreward_files_take_the_official_uint8_resize(videoreward_ckpt):
    """VideoAlign's fetch_video resizes the decoded uint8 frames (torchvision: float interpolation, clip, round to
    uint8) before the processor: a uint8 video given to score_files takes exactly that path; the float (tensor)
    path differs by the 8-bit rounding only."""
    import torchvision.transforms.functional as TF

    from rewardflow.rewards.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    from rewardflow.rewards.videoreward import VideoReward, patchify_video, preprocess_video

    r = VideoReward.from_pretrained(videoreward_ckpt["dir"], min_pixels=56 * 56, video_fps=8.0)
    g = torch.Generator().manual_seed(3)
    small = torch.rand(8, 3, 6, 9, generator=g)  # hard-edged blocks upscaled: the bicubic overshoot is clipped
    video = (torch.nn.functional.interpolate(small, size=(50, 70), mode="nearest") * 255).round().to(torch.uint8)
    official = TF.resize(video[[0, 2, 5, 7]], [56, 56], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    mean, std = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1), torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)
    rows_want, grid_want = patchify_video((official.float() * (1 / 255) - mean) / std)  # processor: rescale, norm
    rows, grid = preprocess_video(video[[0, 2, 5, 7]], min_pixels=56 * 56, max_pixels=56 * 56)
    assert grid.tolist() == grid_want.tolist() == [2, 4, 4]
    torch.testing.assert_close(rows, rows_want, rtol=0, atol=1e-6)  # the uint8 path = official frames, patchified
    heads = r.score_files([video], ["a red circle moving left"])
    z = _independent_heads(videoreward_ckpt, official, "a red circle moving left")
    assert heads["Overall"].item() == pytest.approx(sum(z), abs=1e-4)
    float_rows, _ = preprocess_video(video[[0, 2, 5, 7]].float() / 255, min_pixels=56 * 56, max_pixels=56 * 56)
    assert 0 < (float_rows - rows).abs().max() <= 0.5 / 255 / 0.26 + 1e-6  # at most half a level (rounding)
    with pytest.raises(TypeError, match="uint8"):
        r.score_files([video.float()], ["x"])


def test_videoreward_gradients_reach_frames(videoreward_ckpt):
    from rewardflow.rewards.videoreward import VideoReward

    r = VideoReward.from_pretrained(videoreward_ckpt["dir"], min_pixels=28 * 28, num_frames=4)
    video = torch.rand(1, 6, 3, 40, 40, requires_grad=True)  # resized to 56x56 inside (multiples of 28)
    r(video, ["a red circle"]).sum().backward()
    g = video.grad.abs().sum((0, 2, 3, 4))
    assert set(torch.nonzero(g).flatten().tolist()) == {0, 2, 3, 5}  # round(linspace(0, 5, 4))


def test_videoreward_pair_loss_trains_the_head(videoreward_ckpt):
    from rewardflow.rewards.videoreward import VideoReward, bt_ties_loss

    r = VideoReward.from_pretrained(videoreward_ckpt["dir"], min_pixels=28 * 28, num_frames=2)
    a, b = torch.rand(2, 2, 3, 28, 28), torch.rand(2, 2, 3, 28, 28)
    labels = torch.tensor([[1, -1, 0], [0, 22, 1]])
    r.model.rm_head.requires_grad_(True)
    loss = r.pair_loss(a, b, ["a red circle"] * 2, labels)
    with torch.no_grad():
        want = bt_ties_loss(r.raw_scores(a, ["a red circle"] * 2), r.raw_scores(b, ["a red circle"] * 2), labels)
    assert loss.item() == pytest.approx(want.item(), abs=1e-6)
    loss.backward()
    assert r.model.rm_head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in r.model.backbone.parameters())


def test_videoreward_loader_errors(tmp_path):
    from rewardflow.rewards.videoreward import VideoReward

    with pytest.raises(FileNotFoundError, match="model_config.json"):
        VideoReward.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither a local directory nor downloadable"):
        load_reward("videoreward", path="no-such-org/no-such-videoreward")  # offline in tests


def test_bt_ties_loss_hand_cases():
    from rewardflow.rewards.losses import bt_with_ties_loss as bt_ties_loss
    from rewardflow.rewards.losses import bt_with_ties_probs

    z = torch.zeros(1)
    # tie at equal rewards: -2 ln s(-ln 5) - ln 24 = 2 ln 6 - ln 24 = ln 1.5
    assert bt_ties_loss(z, z, torch.tensor([0])).item() == pytest.approx(math.log(1.5), abs=1e-6)
    # A wins at equal rewards: -ln s(-ln 5) = ln 6
    assert bt_ties_loss(z, z, torch.tensor([1])).item() == pytest.approx(math.log(6), abs=1e-6)
    ra, rb = torch.tensor([[2.0, 0.0, 1.0]]), torch.tensor([[0.0, 1.0, 1.0]])
    lab = torch.tensor([[1, -1, 22]])  # third entry masked
    want = (math.log1p(math.exp(-(2 - math.log(5)))) + math.log1p(math.exp(-(1 - math.log(5))))) / 2
    assert bt_ties_loss(ra, rb, lab).item() == pytest.approx(want, abs=1e-6)
    d = torch.linspace(-5, 5, 11)
    pa, pb, pt = bt_with_ties_probs(d, torch.zeros(11)).unbind(-1)
    torch.testing.assert_close(pa + pb + pt, torch.ones(11))
    # the loss is the NLL of those probabilities
    assert bt_ties_loss(d[3:4], z, torch.tensor([0])).item() == pytest.approx(-math.log(pt[3].item()), abs=1e-5)
    with pytest.raises(ValueError, match="no valid labels"):
        bt_ties_loss(z, z, torch.tensor([22]))


# ----------------------------------------------------------------------------------------------------------------
# MJ-Video-style MoE reward
# ----------------------------------------------------------------------------------------------------------------


def _tiny_clip():
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    from rewardflow.toy.world import VOCAB

    # word-level CLIP BPE vocab: bytes, words + "</w>", specials (no merges needed for whole-word tokens)
    base = [chr(i) for i in range(33, 127)]
    toks = base + [b + "</w>" for b in base] + [w + "</w>" for w in VOCAB + ["moving", "up", "down"]]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(toks + ["<|startoftext|>", "<|endoftext|>"]))}
    tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=64)
    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=1,
                         vocab_size=len(vocab), max_position_embeddings=64, bos_token_id=vocab["<|startoftext|>"],
                         eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=1,
                           image_size=32, patch_size=8), projection_dim=16)).eval()
    return clip, tok


@pytest.fixture(scope="module")
def mj_dir(tmp_path_factory):
    from rewardflow.rewards.mjvideo import build_clip_mjvideo

    clip, tok = _tiny_clip()
    r = build_clip_mjvideo(clip, tok, gate_hidden=24, gate_layers=3, num_frames=4)
    with torch.no_grad():  # non-trivial gates
        for p in r.model.criteria_gate.mlp.parameters():
            p.add_(0.3 * torch.randn_like(p))
    d = tmp_path_factory.mktemp("mjvideo")
    r.save_pretrained(d)
    return d


def test_mjvideo_layout_and_gates(mj_dir):
    from rewardflow.rewards.mjvideo import ASPECTS, CRITERIA, criteria_groups

    assert [len(c) for c in ASPECTS.values()] == [5, 6, 5, 7, 5] and len(CRITERIA) == 28
    assert criteria_groups()[3] == list(range(16, 23)) and CRITERIA[27] == "bias_fairness/gender"
    r = load_reward("mjvideo", path=str(mj_dir))
    o = r.outputs(torch.rand(3, 8, 3, 32, 32), ["a red circle moving left"] * 3)
    assert o["criteria"].shape == (3, 28) and o["aspects"].shape == (3, 5) and o["overall"].shape == (3,)
    torch.testing.assert_close(o["aspect_gate"].sum(-1), torch.ones(3))
    for g in criteria_groups():
        torch.testing.assert_close(o["criteria_gate"][:, g].sum(-1), torch.ones(3))
    assert (o["criteria_gate"] > 0).all() and (o["aspect_gate"] > 0).all()


def test_mjvideo_score_equals_independent_head_and_gates(mj_dir):
    from safetensors.torch import load_file
    from transformers import CLIPModel

    from rewardflow.rewards.mjvideo import criteria_groups

    r = load_reward("mjvideo", path=str(mj_dir))
    torch.manual_seed(2)
    video = torch.rand(2, 12, 3, 40, 40)
    prompts = ["a red circle moving left", "two blue squares"]
    heads = r.all_heads(video, prompts)

    # independent: frames int(linspace(0, 11, 4, endpoint=False)) = [0, 2, 5, 8], bicubic square resize to 32,
    # CLIP mean/std, mean of unit image embeddings, features [v, t, v*t]
    clip = CLIPModel.from_pretrained(str(mj_dir / "backbone"))
    w = load_file(str(mj_dir / "model.safetensors"))
    x = torch.nn.functional.interpolate(video[:, [0, 2, 5, 8]].flatten(0, 1), size=(32, 32), mode="bicubic",
                                        antialias=True, align_corners=False)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    with torch.no_grad():
        v = clip.get_image_features(pixel_values=(x - mean) / std)
        v = getattr(v, "pooler_output", v)
        v = torch.nn.functional.normalize(torch.nn.functional.normalize(v, dim=-1).view(2, 4, -1).mean(1), dim=-1)
        enc = r.model.backbone.tokenizer(prompts, padding=True, return_tensors="pt")
        t = clip.get_text_features(**enc)
        t = torch.nn.functional.normalize(getattr(t, "pooler_output", t), dim=-1)
    h = torch.cat([v, t, v * t], -1)

    def mlp(prefix, x):
        for i in (0, 2, 4):
            x = torch.relu(x @ w[f"{prefix}.mlp.{i}.weight"].T + w[f"{prefix}.mlp.{i}.bias"])
        return x @ w[f"{prefix}.mlp.6.weight"].T + w[f"{prefix}.mlp.6.bias"]

    crit = h @ w["reward_head.weight"].T
    cl = mlp("criteria_gate", h)
    wc = torch.cat([torch.softmax(cl[:, g], -1) for g in criteria_groups()], -1) * w["criteria_gate.logit_scale"]
    wa = torch.softmax(mlp("aspect_gate", h), -1) * w["aspect_gate.logit_scale"]
    aspects = torch.stack([(wc[:, g] * crit[:, g]).sum(-1) for g in criteria_groups()], -1)
    overall = (wa * aspects).sum(-1)
    torch.testing.assert_close(heads["overall"], overall, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(heads["coherence_consistency"], aspects[:, 3], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(heads["safety/nsfw_subtle"], crit[:, 9], atol=1e-5, rtol=1e-4)
    assert r.primary_head == "overall" and len(r.heads) == 34


def test_mjvideo_gradients_reach_frames(mj_dir):
    r = load_reward("mjvideo", path=str(mj_dir))
    video = torch.rand(1, 8, 3, 32, 32, requires_grad=True)
    r(video, ["a red circle"]).sum().backward()
    g = video.grad.abs().sum((0, 2, 3, 4))
    assert set(torch.nonzero(g).flatten().tolist()) == {0, 1, 3, 5}  # int(linspace(0, 7, 4, endpoint=False))


def test_mjvideo_trains_on_mjbench_format(mj_dir, tmp_path):
    from rewardflow.io.video import save_video
    from rewardflow.rewards.mjvideo import MJBenchVideoPairs, MJVideoReward, preference_accuracy, train_mjvideo

    torch.manual_seed(0)
    recs = []
    for i in range(4):
        good, bad = torch.full((8, 3, 32, 32), 0.8), torch.rand(8, 3, 32, 32) * 0.3
        save_video(good, tmp_path / f"g{i}.mp4")
        save_video(bad, tmp_path / f"b{i}.mp4")
        first = i % 2 == 0
        crit_g, crit_b = [1] * 5 + [2] * 23, [0] * 5 + [2] * 23
        recs.append({"caption": "a red circle", "video_0": f"g{i}.mp4" if first else f"b{i}.mp4",
                     "video_1": f"b{i}.mp4" if first else f"g{i}.mp4",
                     "criteria_0": crit_g if first else crit_b, "criteria_1": crit_b if first else crit_g,
                     "aspect_0": [1.0 if first else 0.0, 0.5, 0.5, 0.5, 0.5],
                     "aspect_1": [0.0 if first else 1.0, 0.5, 0.5, 0.5, 0.5],
                     "aspect_preference": ["Video 1 better" if first else "Video 2 better"] + ["Same"] * 4,
                     "overall_preference": "Video 1 better" if first else "Video 2 better"})
    (tmp_path / "train.json").write_text(json.dumps(recs))
    ds = MJBenchVideoPairs(tmp_path / "train.json")
    r = MJVideoReward.from_pretrained(mj_dir)
    before = [p.clone() for p in r.model.backbone.parameters()]
    losses = train_mjvideo(r, ds, steps=30, batch_size=2, lr=1e-2)
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert all(torch.equal(a, b) for a, b in zip(before, r.model.backbone.parameters()))  # frozen backbone
    with torch.no_grad():
        items = [ds[i] for i in range(4)]
        s0 = r(torch.stack([it["video_0"] for it in items]), ["a red circle"] * 4)
        s1 = r(torch.stack([it["video_1"] for it in items]), ["a red circle"] * 4)
    labels = [rec["overall_preference"] for rec in recs]
    assert preference_accuracy(s0, s1, labels, "strict") == 1.0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"caption": "x", "video_0": "a", "video_1": "b", "criteria_0": [1, 2]}]))
    with pytest.raises(ValueError, match="28"):
        MJBenchVideoPairs(bad)


def test_preference_accuracy_strict_and_tie_aware():
    from rewardflow.rewards.mjvideo import preference_accuracy

    s0 = [1.0, 0.0, 2.0, 5.0, 3.0]
    s1 = [0.0, 1.0, 2.0, 5.0, 4.0]
    labels = ["Video 1 better", "Video 1 better", "Video 2 better", "Same", -1]
    # kept pairs: correct, wrong, predicted tie, (human tie dropped), correct -> strict 2/4, tie-aware 2.5/4
    assert preference_accuracy(s0, s1, labels, "strict") == pytest.approx(0.5)
    assert preference_accuracy(s0, s1, labels, "tie_aware") == pytest.approx(0.625)
    # with a tie threshold of 1, pairs 1, 2 and 5 become predicted ties
    assert preference_accuracy(s0, s1, labels, "tie_aware", tie_eps=1.0) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="strict"):
        preference_accuracy(s0, s1, labels, "loose")


def test_mjvideo_loss_terms_by_hand():
    from rewardflow.rewards.mjvideo import labels_from_record, mjvideo_loss

    def out(c, a, o, g):
        return {"criteria": torch.tensor([c]), "aspects": torch.tensor([a]), "overall": torch.tensor([o]),
                "aspect_gate": torch.tensor([g])}

    rec = {"criteria_0": [1] * 5 + [2] * 23, "criteria_1": [0] * 5 + [2] * 23,
           "aspect_0": [1, 0, 0, 0, 0], "aspect_1": [0, 0, 0, 0, 0],
           "aspect_preference": ["Video 1 better"] + ["Same"] * 4, "overall_preference": "Video 2 better"}
    lab = {k: v[None] for k, v in labels_from_record(rec).items()}
    g = [0.5, 0.5, 0.0, 0.0, 0.0]
    o0 = out([0.5] * 28, [1.0, 0, 0, 0, 0], 2.0, g)
    o1 = out([0.0] * 28, [0.0, 0, 0, 0, 0], 1.0, g)
    total, terms = mjvideo_loss(o0, o1, lab)
    assert terms["criteria"] == pytest.approx(0.25 / 2)  # (0.5-1)^2 on 5 criteria, 0 on the other 5
    assert terms["aspect_mse"] == pytest.approx(0.0)
    # aspects 1-4 unrelated for both videos: -ln(1 - g) = ln 2 for aspect 1, 0 for the rest -> mean over 8
    assert terms["gating"] == pytest.approx(2 * math.log(2) / 8)
    assert terms["aspect_bt"] == pytest.approx(math.log1p(math.exp(-1.0)))
    assert terms["overall_bt"] == pytest.approx(math.log1p(math.exp(1.0)))  # video 2 preferred but scored lower
    want = 0.3 * terms["criteria"] + 0.3 * terms["aspect_mse"] + 0.3 * terms["gating"] + terms["aspect_bt"] + \
        terms["overall_bt"]
    assert float(total) == pytest.approx(want, rel=1e-6)
