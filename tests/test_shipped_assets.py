"""The shipped toy weights: they load, the base is mediocre on held-out prompts, the reward ranks captions, and the
demo runs end to end and writes what it promises."""

import json

import numpy as np
import pytest
import torch

from rewardflow.toy.evaluation import eval_prompts, generator_accuracy
from rewardflow.toy import world


@pytest.fixture(scope="module")
def gen():
    from rewardflow.toy.generator import ToyGenerator

    return ToyGenerator.from_pretrained(guidance_scale=2.0)


def test_shipped_generator_is_mediocre_on_heldout(gen):
    """The demo's setting (cfg 2, 4 steps): mediocre on held-out compositions, with headroom in every category
    but `single`; the two-position category is essentially unsolved."""
    rep = generator_accuracy(gen, eval_prompts("heldout", 12), steps=4)
    print("held-out oracle accuracy", rep["accuracy"], rep["per_category"])
    assert 0.2 <= rep["accuracy"] <= 0.6
    assert rep["per_category"]["single"] > rep["per_category"]["two_pos"]


@pytest.mark.parametrize("name", ["toy_clip", "toy_clip_adv"])
def test_shipped_reward_ranks_true_caption_over_hard_negative(name):
    from rewardflow.rewards.base import load_reward

    r = load_reward(name)
    rng = np.random.default_rng(0)
    scenes = world.sample_scenes(rng, 200, split="heldout")
    imgs = torch.from_numpy(world.render_batch(scenes, rng=rng)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        pos = r(imgs, [s.caption for s in scenes])
        neg = r(imgs, [world.hard_negative(s, rng).caption for s in scenes])
    acc = float((pos > neg).float().mean())
    print(name, "true > hard negative on held-out renders:", acc)
    assert acc >= 0.8


def test_demo_small_run_writes_summary_and_grid(tmp_path):
    from rewardflow.commands.demos.image import DemoConfig, run_demo

    s = run_demo(tmp_path, DemoConfig(per_category=2, iterations=3, n_candidates=2), verbose=False)
    saved = json.loads((tmp_path / "summary.json").read_text())
    for k in ("oracle_accuracy_before", "oracle_accuracy_after", "reward_mean_before", "reward_mean_after",
              "seconds_total", "num_prompts"):
        assert k in saved
    assert saved["num_prompts"] == 10 == s["num_prompts"]
    assert saved["cpu"]["torch_threads"] == torch.get_num_threads()  # the CPU threading is recorded
    # ReNO keeps the best iterate, and best-of-N includes the base noise: the reward cannot go down
    assert saved["reward_mean_after"] >= saved["reward_mean_best_of_n"] - 1e-6
    assert saved["reward_mean_best_of_n"] >= saved["reward_mean_before"] - 1e-6
    from PIL import Image

    assert Image.open(tmp_path / "before_after.png").size[0] > 0


@pytest.mark.slow
def test_full_demo_meets_targets(tmp_path):
    """The README's demo: +20 points of held-out oracle accuracy. Its time is a measured figure (README), not
    asserted: timings on a shared CPU vary 2-3x (138 s once while another job held a core)."""
    from rewardflow.commands.demos.image import run_demo

    torch.set_num_threads(2)
    s = run_demo(tmp_path)
    assert s["oracle_accuracy_after"] - s["oracle_accuracy_before"] >= 0.20


def test_demo_picture_labels_each_pair_with_prompt_and_verdict(tmp_path):
    """before_after.png: per prompt the before / after images with the oracle's bar under each, then the prompt and
    the verdicts in words; row labels on the left (pixel checks at the layout's positions)."""
    import numpy as np
    from PIL import Image

    from rewardflow.commands.demos.image import FAIL, PASS, _grid

    n, cols, scale = 3, 2, 4
    before, after = torch.zeros(n, 3, 32, 32), torch.ones(n, 3, 32, 32)
    prompts = ["a red circle", "two blue squares at the top left and a green triangle", "a yellow square"]
    _grid(before, after, [False, True, False], [True, True, False], tmp_path / "g.png", prompts, cols=cols,
          scale=scale, title="t")
    im = np.asarray(Image.open(tmp_path / "g.png").convert("RGB")).astype(int)
    H, W, gap, left, bar, head = 128, 128, 12, 58, 5, 50
    block_h = 2 * (H + bar + 4) + 5 * 14 + 10
    assert im.shape == (head + 2 * (block_h + gap), left + cols * (W + gap), 3)

    def bar_color(i, k):  # the bar under image k (0 before, 1 after) of prompt i
        r, c = divmod(i, cols)
        y = head + r * (block_h + gap) + k * (H + bar + 4) + H + 3
        return tuple(im[y, left + c * (W + gap) + W // 2])

    assert [bar_color(i, 0) for i in range(n)] == [FAIL, PASS, FAIL]
    assert [bar_color(i, 1) for i in range(n)] == [PASS, PASS, FAIL]
    y_img = head + H // 2
    assert tuple(im[y_img, left + W // 2]) == (0, 0, 0)  # the before image itself
    for i in range(n):  # text under each pair: the prompt lines and the verdict line are drawn
        r, c = divmod(i, cols)
        y0, x0 = head + r * (block_h + gap) + 2 * (H + bar + 4), left + c * (W + gap)
        caption = im[y0:y0 + 5 * 14, x0:x0 + W]
        assert (caption.sum(-1) < 300).any()
        verdict = im[y0 + 4 * 14:y0 + 5 * 14, x0:x0 + W].reshape(-1, 3)  # "fail -> pass": each word in its colour
        for color in ([FAIL, PASS], [PASS], [FAIL])[i]:
            assert (np.abs(verdict - np.array(color)).sum(1) < 60).any()
        if i:  # pass -> pass has no red, fail -> fail no green
            assert not (np.abs(verdict - np.array((FAIL, PASS)[i - 1])).sum(1) < 60).any()
    assert (im[head:head + H, :left].sum(-1) < 300).any()  # the "before" row label
