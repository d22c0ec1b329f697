"""The toy video world: captions, renderer, exact oracle, the tiny video reward (shipped and trained), CLI."""

import numpy as np
import pytest
import torch

from rewardflow.toy import video as vw


def test_caption_space_and_parse():
    caps = vw.all_video_captions()
    assert len(caps) == 84 and "a red circle moving left" in caps and "an orange square moving up" in caps
    vc = vw.parse_video_caption("A  red circle MOVING left")
    assert (vc.obj.color, vc.obj.shape, vc.direction) == ("red", "circle", "left")
    assert vc.caption == "a red circle moving left"
    assert vw.video_caption_split("a red triangle moving up") == "heldout"
    assert vw.video_caption_split("a red circle moving up") == "train"
    with pytest.raises(ValueError, match="unknown direction 'sideways'"):
        vw.parse_video_caption("a red circle moving sideways")
    with pytest.raises(ValueError, match="expected '<a|an> <colour> <shape> moving"):
        vw.parse_video_caption("a red circle")
    with pytest.raises(ValueError, match="one object without a position"):
        vw.parse_video_caption("two red circles moving left")


def test_oracle_is_exact_on_rendered_ground_truth():
    rng = np.random.default_rng(0)
    caps = vw.all_video_captions()
    for i, c in enumerate(caps):
        clip = vw.render_clip(c, frames=8 if i % 2 else 16, rng=rng)
        assert clip.shape[1:] == (32, 32, 3) and clip.dtype == np.uint8
        assert vw.video_oracle(clip, c), c
        assert vw.video_oracle_score(clip, c) == 1.0


def test_oracle_rejects_negatives_with_partial_credit():
    rng = np.random.default_rng(1)
    for c in vw.all_video_captions()[::7]:
        clip = vw.render_clip(c, frames=8, rng=rng)
        vc = vw.parse_video_caption(c)
        assert vw.clip_direction(clip) == vc.direction
        assert vw.clip_direction(clip[::-1]) == vw.OPPOSITE[vc.direction]
        assert not vw.video_oracle(clip[::-1], c) and vw.video_oracle(clip[::-1], vw.VideoCaption(
            vc.obj, vw.OPPOSITE[vc.direction]))
        negs = vw.video_negatives(c, rng)
        assert len(negs["direction"]) == 3 and negs["content"]
        for n in negs["direction"]:
            assert vw.video_oracle_score(clip, n) == 0.5  # content right, motion wrong
        for n in negs["content"]:
            assert vw.video_oracle_score(clip, n) == 0.5  # motion right, object wrong in every frame
        still = vw.render_clip(c, frames=8, rng=rng, still=True)
        assert vw.clip_direction(still) == "still" and vw.video_oracle_score(still, c) == 0.5


def test_render_clips_tensor_layout():
    v = vw.render_clips(["a red circle moving left", "a blue square moving down"], frames=8,
                        rng=np.random.default_rng(0))
    assert v.shape == (2, 8, 3, 32, 32) and v.dtype == torch.float32 and v.max() <= 1


def test_shipped_toy_video_reward_prefers_the_right_motion_and_passes_gradients():
    from rewardflow.rewards.base import load_reward

    r = load_reward("toy_video")
    assert r.modality == "video" and r.differentiable
    rng = np.random.default_rng(7)
    caps = [c for c in vw.all_video_captions() if vw.video_caption_split(c) == "heldout"][::2]
    clips = vw.render_clips(caps, frames=8, rng=rng)
    with torch.no_grad():
        pos = r(clips, caps)
        rev = r(clips.flip(1), caps)
        opp = r(clips, [vw.VideoCaption(vw.parse_video_caption(c).obj,
                                        vw.OPPOSITE[vw.parse_video_caption(c).direction]).caption for c in caps])
    assert (pos > rev).float().mean() >= 0.9 and (pos > opp).float().mean() >= 0.9
    x = clips[:2].clone().requires_grad_(True)
    r(x, caps[:2]).sum().backward()
    assert x.grad.abs().sum((0, 2, 3, 4)).gt(0).all()  # every frame gets gradient (temporal head)


def test_toy_video_oracle_reward():
    from rewardflow.rewards.base import load_reward

    r = load_reward("toy_video_oracle")
    assert not r.differentiable
    clip = vw.render_clips(["a green circle moving right"], frames=8, rng=np.random.default_rng(2))
    out = r.all_heads(torch.cat([clip, clip.flip(1)]), ["a green circle moving right"] * 2)
    assert out["score"].tolist() == [1.0, 0.5] and out["pass"].tolist() == [1.0, 0.0]


def test_cli_train_video_reward_tiny(tmp_path, capsys):
    from rewardflow.cli import main
    from rewardflow.toy.video_rewards import ToyVideoReward

    assert main(["toy", "train-video-reward", "--out", str(tmp_path / "vr"), "--steps", "2", "--batch",
                 "4"]) == 0
    r = ToyVideoReward(tmp_path / "vr")
    s = r(vw.render_clips(["a red circle moving left"], rng=np.random.default_rng(0)), ["a red circle moving left"])
    assert s.shape == (1,) and -1 <= float(s) <= 1
    assert main(["toy", "render-video", "a red circle moving up", "--out", str(tmp_path / "c.gif")]) == 0
    from rewardflow.io.video import load_video

    clip = load_video(tmp_path / "c.gif")
    # PIL's GIF writer merges identical consecutive frames (adding their durations), so <= 16 frames come back
    assert 8 <= clip.shape[0] <= 16 and clip.shape[1:] == (3, 32, 32)
    assert vw.video_oracle(clip, "a red circle moving up")
    assert main(["toy", "render-video", "a red blob moving up", "--out", str(tmp_path / "d.gif")]) == 2
    assert "unknown word(s) 'blob'" in capsys.readouterr().err
