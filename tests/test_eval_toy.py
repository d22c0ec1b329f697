import numpy as np
import torch

from rewardflow.eval.toy import eval_prompts, oracle_report
from rewardflow.toy import world


def test_eval_prompts_deterministic_heldout_and_balanced():
    a, b = eval_prompts("heldout", 3, seed=1), eval_prompts("heldout", 3, seed=1)
    assert a == b and len(a) == 15 and len(set(a)) == 15
    assert all(world.caption_split(p) == "heldout" for p in a)
    cats = [world.parse_caption(p).category for p in a]
    assert all(cats.count(c) == 3 for c in world.CATEGORIES)
    assert eval_prompts("heldout", 3, seed=2) != a


def test_oracle_report_counts_by_category():
    prompts = eval_prompts("heldout", 2)
    rng = np.random.default_rng(0)
    imgs = torch.from_numpy(world.render_batch([world.parse_caption(p) for p in prompts], rng=rng))
    imgs = imgs.permute(0, 3, 1, 2).float() / 255
    imgs[::2] = 0  # blank every other image: exactly one of the two prompts per category passes
    rep = oracle_report(imgs, prompts)
    assert rep["accuracy"] == 0.5 and rep["passed"] == [False, True] * 5
    assert rep["per_category"] == {c: 0.5 for c in world.CATEGORIES}
