import math

import numpy as np
import pytest
import torch
from _rl_helpers import PROMPTS, BrightnessReward, make_method, mean_reward, train

from rewardflow.align.methods.dragon import kto_loss, split_sets
from rewardflow.rewards.distributional import (
    FrechetReward,
    ImageEncoder,
    ReferenceStats,
    VendiReward,
    frechet_distance,
    gaussian_stats,
    leave_one_out,
    vendi_score,
    vendi_score_from_kernel,
)


def _pool_encoder(calls=None):
    """A deterministic 'encoder': 4x4 average pooling of the green channel -> 16-d embeddings."""
    def fn(x):
        if calls is not None:
            calls.append(len(x))
        return torch.nn.functional.adaptive_avg_pool2d(x[:, 1:2], 4).flatten(1)
    return ImageEncoder(fn, "pool4")


# ------------------------------------------------------------------------------------------ distributional math
def test_frechet_distance_closed_form():
    mu1, mu2 = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0])
    s1, s2 = torch.diag(torch.tensor([1.0, 4.0])), torch.diag(torch.tensor([4.0, 9.0]))
    # diagonal: ||mu1 - mu2||^2 + sum (sqrt a - sqrt b)^2 = 1 + 1 + 1
    assert float(frechet_distance(mu1, s1, mu2, s2)) == pytest.approx(3.0, abs=1e-10)
    # a common rotation of both covariances leaves the distance unchanged
    c, s = math.cos(0.3), math.sin(0.3)
    R = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    mu1, mu2, s1, s2 = mu1.double(), mu2.double(), s1.double(), s2.double()
    assert float(frechet_distance(R @ mu1, R @ s1 @ R.T, R @ mu2, R @ s2 @ R.T)) == pytest.approx(3.0, abs=1e-9)
    # non-commuting covariances: Tr((S1 S2)^1/2) = sum sqrt(eigenvalues of S1 S2)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 5, generator=g, dtype=torch.float64), torch.randn(5, 5, generator=g, dtype=torch.float64)
    S1, S2 = a @ a.T + 0.1 * torch.eye(5, dtype=torch.float64), b @ b.T + 0.1 * torch.eye(5, dtype=torch.float64)
    m1, m2 = torch.randn(5, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    tr_sqrt = torch.linalg.eigvals(S1 @ S2).real.clamp(min=0).sqrt().sum()
    expected = (m1 - m2).pow(2).sum() + S1.trace() + S2.trace() - 2 * tr_sqrt
    assert float(frechet_distance(m1, S1, m2, S2)) == pytest.approx(float(expected), rel=1e-9)


def test_frechet_distance_of_identical_sets_is_zero():
    emb = torch.randn(200, 8, generator=torch.Generator().manual_seed(1))
    mu, sig = gaussian_stats(emb)
    assert torch.allclose(sig, torch.from_numpy(np.cov(emb.double().numpy(), rowvar=False)))
    assert float(frechet_distance(mu, sig, mu, sig)) == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(mu, sig, mu[:3], sig[:3, :3])


def test_vendi_score_definition():
    e = torch.tensor([[1.0, 0.0, 0.0]])
    assert float(vendi_score(e.repeat(5, 1))) == pytest.approx(1.0, abs=1e-9)  # n identical samples -> 1
    assert float(vendi_score(torch.eye(4))) == pytest.approx(4.0, abs=1e-9)      # n orthogonal samples -> n
    K = torch.tensor([[1.0, 0.5], [0.5, 1.0]])  # eigenvalues of K/2: 0.75, 0.25
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert float(vendi_score_from_kernel(K)) == pytest.approx(math.exp(h), rel=1e-9)


def test_leave_one_out_contributions_hand_made():
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # two duplicates and one orthogonal sample
    full = math.exp(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)))
    contrib = leave_one_out(vendi_score, emb)
    # removing a duplicate leaves 2 orthogonal samples (Vendi 2); removing the odd one leaves 1
    assert torch.allclose(contrib, torch.tensor([full - 2, full - 2, full - 1], dtype=torch.float32), atol=1e-6)


def test_reference_stats_are_cached_by_hash(tmp_path):
    calls = []
    enc = _pool_encoder(calls)
    s1 = ReferenceStats.build(enc, "toy", n=16, cache_dir=tmp_path)
    assert calls == [16] and len(list(tmp_path.glob("*.safetensors"))) == 1
    s2 = ReferenceStats.build(enc, "toy", n=16, cache_dir=tmp_path)  # served from disk: the encoder is not called
    assert calls == [16] and s2.key == s1.key
    assert torch.equal(s1.mu, s2.mu) and torch.equal(s1.sigma, s2.sigma) and s2.count == 16
    other = ReferenceStats.build(ImageEncoder(enc.fn, "pool4-v2"), "toy", n=16, cache_dir=tmp_path)
    assert other.key != s1.key  # another encoder identity -> another cache entry
    with pytest.raises(FileNotFoundError, match="reference exemplar folder"):
        ReferenceStats.build(enc, tmp_path / "missing", cache_dir=tmp_path)


def test_reference_stats_from_an_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    arrs = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(3)]
    ref = tmp_path / "ref"
    ref.mkdir()
    for i, a in enumerate(arrs):
        Image.fromarray(a).save(ref / f"{i}.png")
    stats = ReferenceStats.build(_pool_encoder(), ref, cache_dir=tmp_path / "cache")
    imgs = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float() / 255
    mu, sig = gaussian_stats(_pool_encoder()(imgs))
    assert torch.allclose(stats.mu, mu) and torch.allclose(stats.sigma, sig)


def test_frechet_and_vendi_rewards(tmp_path):
    enc = _pool_encoder()
    stats = ReferenceStats.build(enc, "toy", n=32, cache_dir=tmp_path)
    fr = FrechetReward(enc, stats, eps=0.0)
    imgs = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    prompts = ["x"] * 6
    emb = enc(imgs)
    mu, sig = gaussian_stats(emb)
    assert float(fr.score_set(imgs, prompts)) == pytest.approx(-float(frechet_distance(mu, sig, stats.mu, stats.sigma)),
                                                             rel=1e-5)
    contrib = fr(imgs, prompts)  # per-sample: leave-one-out contribution to -FD
    mu5, sig5 = gaussian_stats(emb[1:])
    fd5 = float(frechet_distance(mu5, sig5, stats.mu, stats.sigma))
    assert float(contrib[0]) == pytest.approx(fd5 - float(frechet_distance(mu, sig, stats.mu, stats.sigma)), rel=1e-4)
    assert fr.set_level and not fr.differentiable
    vr = VendiReward(enc)
    assert float(vr.score_set(imgs, prompts)) == pytest.approx(float(vendi_score(emb)), rel=1e-6)
    with pytest.raises(ValueError, match="at least"):
        fr(imgs[:2], prompts[:2])


# ------------------------------------------------------------------------------------------ DRAGON
def test_kto_loss_hand_computed():
    beta = 4.0
    err, ref = torch.tensor([0.1, 0.5, 0.3]), torch.tensor([0.2, 0.4, 0.3])
    des = torch.tensor([True, False, True])
    h = [2.0 * 0.1, 2.0 * -0.1, 0.0]
    z = max(0.0, sum(h) / 3)
    sig = lambda v: 1 / (1 + math.exp(-v))
    exp_kto = ((1 - sig(h[0] - z)) + (1 - sig(z - h[1])) + (1 - sig(h[2] - z))) / 3
    assert float(kto_loss(err, ref, des, beta)[0]) == pytest.approx(exp_kto, rel=1e-6)


def test_positive_negative_split_hand_made():
    prompts = ["a", "a", "a", "b", "b", "c", "c"]
    s = torch.tensor([0.2, 0.9, 0.1, 0.5, 0.5, 0.3, 0.7])
    d, ok = split_sets(prompts, s, "prompt")  # above the prompt's mean; "b" is a tie: both negative
    assert d.tolist() == [False, True, False, False, False, False, True] and ok.all()
    # top half (7 // 2 = 3) of the batch; ties keep batch order
    assert split_sets(prompts, s, "batch")[0].tolist() == [False, True, False, True, False, False, True]
    s[1] = float("nan")  # a sample the reward could not score is in neither set
    d, ok = split_sets(prompts, s, "batch")
    assert ok.tolist() == [True, False, True, True, True, True, True]
    assert d.tolist() == [False, False, False, True, True, False, True]


def test_dragon_before_the_first_update(flow_gen):
    flow_gen.add_lora(4)
    m = make_method("dragon", flow_gen, group_size=3)
    assert m.loss_kind == "dpo"
    for b in m.collect(PROMPTS, 0):
        loss, _ = m.loss(b, 0)
        assert float(loss) == pytest.approx(math.log(2), abs=1e-6)  # policy == reference
    vendi = VendiReward(_pool_encoder())
    k = make_method("dragon", flow_gen, reward=vendi, group_size=3)
    assert k.loss_kind == "kto" and k.split == "batch"
    (b,) = k.collect(PROMPTS, 0)
    assert int(b["desirable"].sum()) == 3  # top half of 6 leave-one-out contributions
    assert float(k.loss(b, 0)[0]) == pytest.approx(0.5, abs=1e-6)


def test_dragon_dpo_loss_equals_hand_computation(flow_gen):
    flow_gen.add_lora(4)
    beta = 50.0
    m = make_method("dragon", flow_gen, group_size=3, beta=beta)
    (b,) = m.collect(PROMPTS, 0)
    with torch.no_grad():
        for name, p in flow_gen.denoiser.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    loss, _ = m.loss(b, 0)
    t = b["t"].view(-1, 1, 1, 1)
    cond = flow_gen.encode_prompts(b["prompts"])

    def errs(x0):  # rectified flow: x_t = (1 - t) x0 + t eps, target eps - x0 (docs/algorithms.md#rectified-flow)
        xt = (1 - t) * x0 + t * b["noise"]
        with torch.no_grad():
            e = ((flow_gen.predict(xt, b["t"], cond) - (b["noise"] - x0)) ** 2).flatten(1).mean(1)
            with flow_gen.reference():
                r = ((flow_gen.predict(xt, b["t"], cond) - (b["noise"] - x0)) ** 2).flatten(1).mean(1)
        return e, r

    (ew, rw), (el, rl) = errs(b["x0_w"]), errs(b["x0_l"])
    inside = -0.5 * beta * ((ew - rw) - (el - rl))
    assert float(loss) == pytest.approx(float(torch.nn.functional.softplus(-inside).mean()), rel=1e-4)


def test_dragon_raises_a_black_box_reward(flow_gen):
    reward = BrightnessReward()
    flow_gen.snapshot_reference()  # full fine-tuning with a frozen copy as the reference
    m = make_method("dragon", flow_gen, reward=reward, group_size=4, beta=500.0)
    before = mean_reward(flow_gen, reward)
    train(m, 4, lr=1e-3)
    after = mean_reward(flow_gen, reward)
    assert after > before + 1e-3, (before, after)


def test_dragon_rejects_bad_config(flow_gen):
    with pytest.raises(ValueError, match="loss"):
        make_method("dragon", flow_gen, loss="ipo")
    with pytest.raises(ValueError, match="group_size"):
        make_method("dragon", flow_gen, group_size=1)


@pytest.mark.slow
def test_dragon_raises_the_toy_clip_reward_in_the_toy_world(tmp_path):
    from _rl_helpers import toy_world_run

    s = toy_world_run("configs/toy/dragon.yaml", tmp_path, "group_size=4")
    assert s["skipped_steps"] == 0
    assert s["after"]["eval_reward"] > s["before"]["eval_reward"], (s["before"], s["after"])


def test_reward_spec_names_for_the_toy_distributional_rewards_and_a_clear_missing_option_error():
    from rewardflow.rewards.base import load_reward

    r = load_reward("toy_vendi")
    imgs = torch.rand(4, 3, 32, 32)
    assert 1.0 <= float(r.score_set(imgs, ["a red circle"] * 4)) <= 4.0
    with pytest.raises(ValueError, match=r"reward 'frechet': missing a required argument: 'encoder'.*options are"):
        load_reward("frechet")
