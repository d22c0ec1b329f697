import math

import pytest
import torch
from _rl_helpers import PROMPTS, BrightnessReward, make_method, mean_reward, train
from conftest import make_diffusion_gen

from rewardflow.align.common import policy as P


def test_stat_tracker_hand_made_scores():
    tr = P.PerPromptStatTracker(buffer_size=3, min_count=2)
    adv = tr.update(["a", "a", "b"], torch.tensor([1.0, 3.0, 10.0]))
    batch = torch.tensor([1.0, 3.0, 10.0])
    bm, bs = float(batch.mean()), float(batch.std(unbiased=False))
    # a: 2 rewards >= min_count -> its own buffer (mean 2, std 1); b: 1 < min_count -> the batch's statistics
    assert torch.allclose(adv, torch.tensor([-1 / (1 + 1e-6), 1 / (1 + 1e-6), (10 - bm) / (bs + 1e-6)]), atol=1e-6)
    adv = tr.update(["a"], torch.tensor([5.0]))  # buffer a = [1, 3, 5]
    assert float(adv[0]) == pytest.approx((5 - 3) / (math.sqrt(8 / 3) + 1e-6), rel=1e-6)
    adv = tr.update(["a"], torch.tensor([7.0]))  # FIFO of 3: [3, 5, 7]
    assert list(tr.stats["a"]) == [3.0, 5.0, 7.0]
    assert float(adv[0]) == pytest.approx((7 - 5) / (math.sqrt(8 / 3) + 1e-6), rel=1e-6)


def test_stat_tracker_ignores_nonfinite_rewards():
    tr = P.PerPromptStatTracker(buffer_size=4, min_count=1)
    adv = tr.update(["a", "a", "a"], torch.tensor([1.0, float("nan"), 3.0]))
    assert list(tr.stats["a"]) == [1.0, 3.0] and torch.isnan(adv[1])
    assert torch.allclose(adv[[0, 2]], torch.tensor([-1.0, 1.0]) / (1 + 1e-6))


def test_batch_advantages_without_tracking():
    r = torch.tensor([1.0, 2.0, 3.0])
    assert torch.allclose(P.batch_advantages(r), (r - 2) / (math.sqrt(2 / 3) + 1e-8))


def test_ddpo_tracker_state_survives_resume(tiny_pipe_dir):
    gen = make_diffusion_gen(tiny_pipe_dir)
    m = make_method("ddpo", gen, samples_per_prompt=2, stat_buffer_size=4, stat_min_count=2)
    m.collect(PROMPTS, 0)
    state = m.state_dict()
    assert set(state["stat_tracker"]["stats"]) == set(PROMPTS)
    fresh = make_method("ddpo", gen, samples_per_prompt=2, stat_buffer_size=4, stat_min_count=2)
    fresh.load_state_dict(state)
    r = torch.tensor([0.3, 0.1, 0.7, 0.2])
    ps = [PROMPTS[0]] * 2 + [PROMPTS[1]] * 2
    assert torch.equal(fresh.tracker.update(ps, r), m.tracker.update(ps, r))


def test_ddpo_loss_equals_hand_computed_ddim_eta(tiny_pipe_dir):
    gen = make_diffusion_gen(tiny_pipe_dir, "epsilon")
    gen.add_lora(4)
    eta, eps = 1.0, 1e-4
    m = make_method("ddpo", gen, steps=3, samples_per_prompt=2, stat_min_count=100)
    batches = m.collect(PROMPTS, 0)
    assert len(batches) == 3
    with torch.no_grad():
        for name, p in gen.denoiser.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    ac = gen.scheduler.alphas_cumprod.double()
    final = float(gen.scheduler.final_alpha_cumprod)
    abar = lambda t: final if t < 0 else float(ac[int(t)])
    b = batches[0]  # per-sample shuffled timesteps: this micro-batch mixes grid points
    loss, _ = m.loss(b, 0)
    logps = []
    for i in range(len(b["prompts"])):
        x, xn = b["x"][i:i + 1].double(), b["x_next"][i:i + 1].double()
        t, tn = float(b["t"][i]), float(b["t_next"][i])
        with torch.no_grad():
            e = gen.predict(x.float(), t, gen.encode_prompts([b["prompts"][i]])).double()
        ab, abp = abar(t), abar(tn)
        x0 = (x - math.sqrt(1 - ab) * e) / math.sqrt(ab)
        sd = eta * math.sqrt((1 - abp) / (1 - ab)) * math.sqrt(1 - ab / abp)  # DDIM eq. 16
        mu = math.sqrt(abp) * x0 + math.sqrt(1 - abp - sd**2) * e
        logps.append((-(xn - mu) ** 2 / (2 * sd**2) - math.log(sd) - 0.5 * math.log(2 * math.pi)).mean())
    ratio = torch.exp(torch.stack(logps) - b["old_log_prob"].double())
    A = b["advantages"].double().clamp(-5, 5)
    expected = torch.maximum(-A * ratio, -A * ratio.clamp(1 - eps, 1 + eps)).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("shuffle", ["none", "shared"])
def test_ddpo_ratio_is_exactly_one_before_the_first_update(tiny_pipe_dir, shuffle):
    gen = make_diffusion_gen(tiny_pipe_dir)
    m = make_method("ddpo", gen, samples_per_prompt=2, shuffle_timesteps=shuffle)
    for b in m.collect(PROMPTS, 0):
        assert m.loss(b, 0)[1]["ratio_max_dev"] == 0.0


def test_ddpo_per_sample_timestep_shuffle(tiny_pipe_dir):
    gen = make_diffusion_gen(tiny_pipe_dir)
    m = make_method("ddpo", gen, steps=4, samples_per_prompt=2)
    batches = m.collect(PROMPTS, 0)
    grid = gen.timesteps(4)
    seen = torch.stack([b["t"] for b in batches], 1)  # [samples, trained steps]
    for row in seen:  # every sample trains every step exactly once, in its own order
        assert sorted(row.tolist()) == sorted(grid[:-1].tolist())
    assert len({tuple(r.tolist()) for r in seen}) > 1  # orders differ between samples
    # sub-batches of one grid point reproduce the rollout log-probs up to float rounding
    assert max(m.loss(b, 0)[1]["ratio_max_dev"] for b in batches) < 1e-5
    half = make_method("ddpo", gen, steps=4, samples_per_prompt=2, timestep_fraction=0.5)
    assert len(half.collect(PROMPTS, 0)) == 2


@pytest.mark.parametrize("kind", ["epsilon", "flow"])
def test_ddpo_black_box_reward_is_raised(tiny_pipe_dir, flow_gen, kind):
    gen = make_diffusion_gen(tiny_pipe_dir) if kind == "epsilon" else flow_gen
    reward = BrightnessReward()
    m = make_method("ddpo", gen, reward=reward, samples_per_prompt=4, noise_level=1.0 if kind == "epsilon" else 0.7)
    before = mean_reward(gen, reward)
    train(m, 4, lr=3e-3)
    after = mean_reward(gen, reward)
    assert after > before + 1e-3, (before, after)


def test_ddpo_rejects_bad_config(tiny_pipe_dir):
    gen = make_diffusion_gen(tiny_pipe_dir)
    with pytest.raises(ValueError, match="shuffle_timesteps"):
        make_method("ddpo", gen, shuffle_timesteps="random")
    with pytest.raises(ValueError, match="noise_level"):
        make_method("ddpo", gen, noise_level=0.0)


def test_ddpo_on_the_trainer_saves_and_restores_the_stat_tracker(tiny_pipe_dir, tmp_path):
    from rewardflow.align.trainer import Trainer, load_train_config

    over = [f"output_dir={tmp_path}", "max_steps=2", "batch_size=2", "sample_steps=2", "lora_rank=4",
            "eval_prompts=''", "report_to=none", "samples_per_prompt=2", "stat_min_count=2", "lr=1e-3"]
    tcfg, mcfg = load_train_config("configs/toy/ddpo.yaml", over)
    tr = Trainer(tcfg, mcfg, generator=make_diffusion_gen(tiny_pipe_dir), reward=BrightnessReward())
    summary = tr.train()
    assert summary["steps"] == 2 and summary["skipped_steps"] == 0
    stats = tr.method.tracker.state_dict()["stats"]
    assert sum(len(v) for v in stats.values()) == 8  # 2 steps x 2 prompts x 2 samples
    tcfg, mcfg = load_train_config("configs/toy/ddpo.yaml", over[:1] + ["max_steps=3"] + over[2:])
    resumed = Trainer(tcfg, mcfg, generator=make_diffusion_gen(tiny_pipe_dir), reward=BrightnessReward())
    assert resumed.maybe_resume() and resumed.step == 2
    assert resumed.method.tracker.state_dict()["stats"] == stats


@pytest.mark.slow
def test_ddpo_raises_the_toy_clip_reward_in_the_toy_world(tmp_path):
    from _rl_helpers import toy_world_run

    # the flow toy generator (the epsilon one is trained separately); DDPO's policy is then the SDE step
    s = toy_world_run("configs/toy/ddpo.yaml", tmp_path, "model=toy", "noise_level=0.7", "samples_per_prompt=4",
                      "stat_min_count=8")
    assert s["skipped_steps"] == 0
    assert s["after"]["eval_reward"] > s["before"]["eval_reward"], (s["before"], s["after"])


@pytest.mark.slow
def test_ddpo_raises_the_toy_clip_reward_of_the_epsilon_toy_generator(tmp_path):
    from _rl_helpers import toy_world_run

    # the shipped epsilon model (DDIM eta = 1 rollouts), the config's own model
    s = toy_world_run("configs/toy/ddpo.yaml", tmp_path, "samples_per_prompt=4", "stat_min_count=8")
    assert s["skipped_steps"] == 0
    assert s["after"]["eval_reward"] > s["before"]["eval_reward"], (s["before"], s["after"])
