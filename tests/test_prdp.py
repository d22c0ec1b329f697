import math

import pytest
import torch
from _rl_helpers import PROMPTS, BrightnessReward, make_method, mean_reward, train
from conftest import make_diffusion_gen

from rewardflow.align.methods.prdp import build_pairs, prdp_loss


def test_build_pairs_hand_made():
    prompts = ["a", "a", "a", "b", "b"]
    assert build_pairs(prompts, "all").tolist() == [[0, 1], [0, 2], [1, 2], [3, 4]]
    rnd = build_pairs(prompts, "random", torch.Generator().manual_seed(0), group_size=2)
    assert len(rnd) == 3  # 2 of the 3 pairs of "a", the only pair of "b"
    assert all(prompts[i] == prompts[j] and i < j for i, j in rnd.tolist())
    with pytest.raises(ValueError, match="pairs"):
        build_pairs(prompts, "best")


def test_prdp_loss_hand_computed():
    eps, beta, T = 0.1, 2.0, 5
    old = torch.tensor([-1.0, -2.0, -0.5])
    logp = old + torch.tensor([0.05, math.log(1.5), math.log(0.7)])  # in range / above / below the clip range
    base = torch.tensor([-1.2, -1.0, -0.5])
    pairs = torch.tensor([[0, 1], [2, 1]])
    dr = torch.tensor([0.3, -0.4])
    loss, _ = prdp_loss(logp, old, base, pairs, dr, beta, T, eps)
    lr = (logp - old) + (old - base)
    lrc = (logp - old).clamp(math.log(0.9), math.log(1.1)) + (old - base)
    per = []
    for (a, b), d in zip(pairs.tolist(), dr.tolist()):
        e = (d - beta * T * (lr[a] - lr[b])) ** 2
        ec = (d - beta * T * (lrc[a] - lrc[b])) ** 2
        per.append(max(float(e), float(ec)))
    assert float(loss) == pytest.approx(sum(per) / 2, rel=1e-6)


def test_prdp_ratio_is_one_and_loss_is_squared_reward_difference_before_the_first_update(tiny_pipe_dir):
    gen = make_diffusion_gen(tiny_pipe_dir)
    gen.add_lora(4)
    m = make_method("prdp", gen, group_size=3, kl_beta=0.1)
    for b in m.collect(PROMPTS, 0):
        loss, met = m.loss(b, 0)
        assert met["ratio_max_dev"] == 0.0 and met["kl"] == 0.0
        assert float(loss) == pytest.approx(float((b["reward_diff"] ** 2).mean()), rel=1e-6)
    # rewards are divided by the step's std: reward differences are in std units
    assert len(b["pairs"]) == 6  # 3 pairs per prompt


@pytest.mark.parametrize("base", ["old", "reference"])
def test_prdp_loss_equals_hand_computation(tiny_pipe_dir, base):
    gen = make_diffusion_gen(tiny_pipe_dir)
    gen.add_lora(4)
    beta, eps, kl_beta = 300.0, 1e-3, 0.5
    m = make_method("prdp", gen, steps=3, group_size=2, beta=beta, clip_range=eps, kl_beta=kl_beta, base=base)
    batches = m.collect(PROMPTS, 0)
    with torch.no_grad():
        for name, p in gen.denoiser.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    b = batches[1]
    loss, _ = m.loss(b, 0)
    t, tn = float(b["t"][0]), float(b["t_next"][0])
    cond = gen.encode_prompts(b["prompts"])
    with torch.no_grad():
        logp = gen.log_prob(b["x"], b["x_next"], t, tn, cond, noise_level=1.0)
        with gen.reference():
            ref = gen.log_prob(b["x"], b["x_next"], t, tn, cond, noise_level=1.0)
        # KL term: the DDIM step means of policy and reference, equal std (docs/algorithms.md#log-probs)
        out, out_ref = gen.predict(b["x"], t, cond), None
        with gen.reference():
            out_ref = gen.predict(b["x"], t, cond)
        s = gen.step(out, b["x"], t, tn, noise_level=1.0, prev_sample=b["x_next"])
        s_ref = gen.step(out_ref, b["x"], t, tn, noise_level=1.0, prev_sample=b["x_next"])
    kl = (((s.mean - s_ref.mean) ** 2).flatten(1).mean(1) / (2 * s.std**2)).mean()
    old = b["old_log_prob"]
    base_lp = old if base == "old" else ref
    lr = logp - base_lp
    lrc = (logp - old).clamp(math.log(1 - eps), math.log(1 + eps)) + (old - base_lp)
    T = 3
    per = []
    for (a, c), d in zip(b["pairs"].tolist(), b["reward_diff"].tolist()):
        e = (d - beta * T * (lr[a] - lr[c])) ** 2
        ec = (d - beta * T * (lrc[a] - lrc[c])) ** 2
        per.append(max(float(e), float(ec)))
    expected = sum(per) / len(per) + kl_beta * float(kl)
    assert float(kl) > 0
    assert float(loss) == pytest.approx(expected, rel=1e-4)


def test_prdp_black_box_reward_is_raised(flow_gen):
    reward = BrightnessReward()
    m = make_method("prdp", flow_gen, reward=reward, group_size=4, noise_level=0.7)
    before = mean_reward(flow_gen, reward)
    train(m, 4, lr=3e-3)
    after = mean_reward(flow_gen, reward)
    assert after > before + 1e-3, (before, after)


def test_prdp_rejects_bad_config(flow_gen):
    with pytest.raises(ValueError, match="group_size"):
        make_method("prdp", flow_gen, group_size=1)
    with pytest.raises(ValueError, match="base"):
        make_method("prdp", flow_gen, base="pretrained")
    with pytest.raises(ValueError, match="clip_range"):
        make_method("prdp", flow_gen, clip_range=1.5)


@pytest.mark.slow
def test_prdp_raises_the_toy_clip_reward_in_the_toy_world(tmp_path):
    from _rl_helpers import toy_world_run

    s = toy_world_run("configs/toy/prdp.yaml", tmp_path, "group_size=4")
    assert s["skipped_steps"] == 0
    assert s["after"]["eval_reward"] > s["before"]["eval_reward"], (s["before"], s["after"])
