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
