import numpy as np
import pytest
import torch

from rewardflow.toy.evaluation import eval_prompts, oracle_report
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


def test_reward_calibration_benchmark_nests_candidates_and_starts_at_the_trainer_eval(tmp_path):
    # benchmarks/toy_reward_calibration.py: best-of-1 is the trainer's evaluation sample (noise seed 0), and the
    # nested candidates make the selected reward non-decreasing in N
    import importlib.util
    import json
    from pathlib import Path

    from rewardflow.pipelines.registry import load_generator
    from rewardflow.rewards.combine import build_reward

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "toy_reward_calibration.py"
    spec = importlib.util.spec_from_file_location("toy_reward_calibration", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "cal.json"
    assert mod.main(["--per-category", "2", "--max-n", "4", "--threads", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["n"] for r in rows] == [1, 2, 4]
    assert rows[0]["reward"] <= rows[1]["reward"] <= rows[2]["reward"]
    gen, reward = load_generator("toy"), build_reward("toy_clip_adv:0.5,toy_clip:0.5")
    prompts = eval_prompts("heldout", 2)
    noise = torch.randn((len(prompts), *gen.latent_shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        imgs = gen.generate(prompts, 4, noise=noise)
    assert abs(float(reward(imgs, prompts).mean()) - rows[0]["reward"]) < 1e-5
    assert rows[0]["oracle_accuracy"] == oracle_report(imgs, prompts)["accuracy"]
    assert "| 4 |" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit):  # argparse error naming the flag, before any model loads
        mod.main(["--max-n", "0", "--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()
