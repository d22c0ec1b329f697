"""Each accuracy definition of docs/rewards.md#accuracy on hand-made score tables (expected values worked out by hand in the
comments), the reward-hacking monitor on constructed runs."""

import math

import numpy as np
import pytest

from rewardflow.eval import accuracy as A
from rewardflow.eval.monitor import PREFIX, RewardHackingMonitor, scan_records


def test_pairwise_without_ties_drops_human_ties_and_counts_model_ties_wrong():
    labels = [1, -1, 0, 1, -1]
    deltas = [0.5, 0.2, 0.3, 0.0, -1.0]
    # pair 2 is a human tie (dropped); 0 right, 1 wrong (B preferred, model says A), 3 exact model tie -> wrong, 4 right
    r = A.pairwise_accuracy(labels, deltas)
    assert r == {"accuracy": 0.5, "n": 4}


def test_strict_vs_tie_aware():
    labels = [1, -1, 0, 1, -1]
    deltas = [0.5, 0.2, 0.3, 0.0, -1.0]
    r = A.strict_tie_aware_accuracy(labels, deltas)
    assert r["n"] == 4 and r["undecided"] == 1
    assert r["strict"] == pytest.approx(2 / 4)          # the undecided pair is wrong
    assert r["tie_aware"] == pytest.approx(2.5 / 4)     # ... or worth 0.5
    # eps widens "undecided": |0.2| <= 0.25 too -> 2 undecided, correct decided: pairs 0 and 4
    r = A.strict_tie_aware_accuracy(labels, deltas, eps=0.25)
    assert r["strict"] == pytest.approx(2 / 4) and r["tie_aware"] == pytest.approx(3 / 4)


RANKS = [[1, 2, 2, 3], [2, 1], [1, 2, 3]]
SCORES = [[0.9, 0.5, 0.7, 0.5], [1.0, 0.0], [0.1, 0.3, 0.2]]


def test_imagereward_micro_accuracy():
    # prompt 0: pairs (0,1) (0,2) (0,3) (2,3) agree, (1,2) human tie skipped, (1,3) model tie -> wrong: 4 of 5
    # prompt 1: 0 of 1; prompt 2: (0,1) (0,2) inverted, (1,2) agrees: 1 of 3 -> micro (4+0+1)/(5+1+3)
    r = A.ranking_micro_accuracy(RANKS, SCORES)
    assert r["n"] == 9
    assert r["accuracy"] == pytest.approx(5 / 9)


def test_hpdv2_macro_agreement_model_ties_not_discordant():
    # prompt 0: no strictly opposite pair (the model tie (1,3) and human tie (1,2) are not discordant) -> 1
    # prompt 1: 1 discordant of 1 -> 0; prompt 2: 2 discordant of 3 -> 1/3; macro = (1 + 0 + 1/3) / 3
    r = A.ranking_macro_agreement(RANKS, SCORES)
    assert r["per_prompt"] == pytest.approx([1.0, 0.0, 1 / 3])
    assert r["accuracy"] == pytest.approx(4 / 9)
    with pytest.raises(ValueError, match="at least 2"):
        A.ranking_macro_agreement([[1]], [[0.3]])


def test_pickapic_half_credit_and_threshold():
    labels = [1, -1, 0, 1]  # label_0 = 1, 0, 0.5, 1
    p0, p1 = A.pair_probs([2.0, 0.0, 1.0, 0.0], [0.0, 0.1, 1.0, 0.5])
    # |p0-p1| = 2*sigmoid(d)-1: 0.7616, 0.0500, 0, 0.2449
    assert abs(p0 - p1) == pytest.approx([math.tanh(1.0), math.tanh(0.05), 0.0, math.tanh(0.25)])
    # t=0: A, B, tie, B -> 1 + 1 + 1 + 0
    assert A.pickapic_accuracy(labels, p0, p1, 0.0)["accuracy"] == pytest.approx(3 / 4)
    # t=0.1: pair 1 becomes a tie vs a B label -> 0.5
    assert A.pickapic_accuracy(labels, p0, p1, 0.1)["accuracy"] == pytest.approx(2.5 / 4)
    # t=0.3: pair 3 (label A, model B) becomes a tie -> 0.5 instead of 0
    assert A.pickapic_accuracy(labels, p0, p1, 0.3)["accuracy"] == pytest.approx(3 / 4)
    # t=1: everything a tie: 0.5 + 0.5 + 1 + 0.5
    assert A.pickapic_accuracy(labels, p0, p1, 1.0)["accuracy"] == pytest.approx(2.5 / 4)


def test_pickapic_threshold_tuned_on_validation():
    labels = [0, 0, 1]
    p0, p1 = A.pair_probs([1.0, 0.0, 3.0], [1.2, 0.5, 0.0])  # |diff| = 0.0997, 0.2449, 0.9051
    t, accs = A.tune_tie_threshold(labels, p0, p1)
    # t=0: B, B, A -> 0.5+0.5+1; t=0.1,0.2: first a tie -> 2.5/3; t=0.3..0.9: both ties right -> 1; t=1: 2.5/3
    assert accs[0] == pytest.approx(2 / 3) and accs[1] == pytest.approx(2.5 / 3)
    assert accs[3:10] == pytest.approx([1.0] * 7) and accs[10] == pytest.approx(2.5 / 3)
    assert t == 0.3  # first maximiser, as np.argmax in the official script


def test_ties_matter_calibration_hand_table():
    labels = [1, 0, 0, -1, 1]
    deltas = [0.8, 0.1, -0.2, 0.05, 0.3]
    # sweep over |delta| = 0.05, 0.1, 0.2, 0.3, 0.8:
    # 0.05: C=2 (0.8, 0.3), Th=2, Tm=1 -> 2/5; 0.1: +Thm -> 3/5; 0.2: +Thm -> 4/5; 0.3: C=1 -> 3/5; 0.8: 2/5
    assert A.ties_stats(labels, deltas, 0.2) == {"C": 2, "D": 0, "Th": 0, "Tm": 1, "Thm": 2}
    r = A.ties_matter_accuracy(labels, deltas)
    assert r["accuracy"] == pytest.approx(0.8) and r["epsilon"] == pytest.approx(0.2) and r["n"] == 5
    # without ties (VideoAlign calc_accuracy_without_ties): pairs 0 C, 3 D, 4 C
    assert A.pairwise_accuracy(labels, deltas)["accuracy"] == pytest.approx(2 / 3)


def test_ties_matter_groups_equal_abs_delta():
    # both |delta| = 0.5 pairs become model ties together: Thm=1, Tm=1, C=1 (0.9) -> 2/3; at 0.9: 1/3
    r = A.ties_matter_accuracy([0, 1, 1], [0.5, -0.5, 0.9])
    assert r["accuracy"] == pytest.approx(2 / 3) and r["epsilon"] == 0.5


def test_ties_matter_matches_brute_force_over_thresholds():
    rng = np.random.default_rng(3)
    h = rng.choice([-1, 0, 1], 60)
    d = np.round(rng.normal(size=60), 1)  # rounded: many equal |delta|
    best = -1.0
    for eps in sorted(set(np.abs(d).tolist())):
        s = A.ties_stats(h, d, eps)
        best = max(best, (s["C"] + s["Thm"]) / sum(s.values()))
    assert A.ties_matter_accuracy(h, d)["accuracy"] == pytest.approx(best)


def test_genai_bench_four_way():
    human = ["leftvote", "rightvote", "tievote", "bothbad_vote", "leftvote"]
    a, b = [0.9, 0.1, 0.8, 0.2, 0.3], [0.1, 0.9, 0.8, 0.2, 0.6]
    pred = A.genai_predict(a, b)  # median of all 10 scores = (0.3 + 0.6) / 2 = 0.45
    assert pred == ["A>B", "B>A", "A=B=Good", "A=B=Bad", "B>A"]
    r = A.genai_bench_accuracy(human, pred)
    assert r["four_way"] == pytest.approx(4 / 5) and r["three_way"] == pytest.approx(4 / 5)
    assert r["without_ties"] == pytest.approx(2 / 3) and r["n_without_ties"] == 3
    pred = A.genai_predict(a, b, good_threshold=0.85)  # the 0.8/0.8 pair is now "both bad"
    r = A.genai_bench_accuracy(human, pred)
    assert r["four_way"] == pytest.approx(3 / 5) and r["three_way"] == pytest.approx(4 / 5)
    with pytest.raises(ValueError, match="unknown GenAI-Bench label"):
        A.genai_bench_accuracy(["maybe"], ["A>B"])


def test_bootstrap_ci_fixed_seed_percentile():
    v = np.array([0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    f = lambda ix: float(v[ix].mean())  # noqa: E731
    lo, hi = A.bootstrap_ci(f, v.size, 500, seed=1)
    assert (lo, hi) == A.bootstrap_ci(f, v.size, 500, seed=1)
    assert lo <= v.mean() <= hi and 0.0 <= lo < hi <= 1.0
    # reference: the same resamples drawn here
    rng = np.random.default_rng(1)
    ref = np.percentile([v[rng.integers(0, 8, 8)].mean() for _ in range(500)], [2.5, 97.5])
    assert (lo, hi) == pytest.approx(tuple(ref))
    assert A.bootstrap_ci(lambda ix: 0.7, 5, 50) == (0.7, 0.7)


def test_per_category():
    h, d = np.array([1, 1, -1, 1]), np.array([1.0, -1.0, -1.0, 2.0])
    cats = ["a", "a", "b", None]
    pc = A.per_category(cats, lambda ix: A.pairwise_accuracy(h[ix], d[ix])["accuracy"])
    assert pc == {"a": 0.5, "b": 1.0}


def test_bad_labels_are_rejected():
    with pytest.raises(ValueError, match="pair labels"):
        A.pairwise_accuracy([2], [0.1])
    with pytest.raises(ValueError, match="NaN"):
        A.pairwise_accuracy([1], [float("nan")])


# ------------------------------------------------------------------------------------------------ monitor
def _run(opt, held, **kw):
    mon = RewardHackingMonitor("hpsv2", ["pickscore"], verbose=False, **kw)
    out = []
    for s, (o, h) in enumerate(zip(opt, held)):
        out += mon.update(s * 10, {"hpsv2": o, "pickscore": h})
    return mon, out


def test_monitor_flags_divergence_once():
    # tau: hpsv2 0.05 * 1.0, pickscore 0.05 * 0.5 = 0.025; pickscore peaks at step 10 (0.52), at step 20 it is
    # 0.07 below while hpsv2 rose 0.2 -> one warning; later steps continue the same episode (no repeat)
    mon, w = _run([1.0, 1.2, 1.4, 1.6, 1.8], [0.5, 0.52, 0.45, 0.40, 0.35])
    assert len(w) == 1 and w[0].startswith(PREFIX) and "step 20" in w[0] and "pickscore" in w[0]
    assert mon.warnings[0]["peak_step"] == 10 and mon.warnings[0]["drop"] == pytest.approx(0.07)


def test_monitor_healthy_run_not_flagged():
    _, w = _run([1.0, 1.2, 1.4, 1.6, 1.8], [0.5, 0.52, 0.53, 0.515, 0.55])  # dip 0.015 < 0.025
    assert w == []
    _, w = _run([1.0, 1.0, 1.01, 1.0, 1.0], [0.5, 0.52, 0.40, 0.30, 0.2])  # held-out falls, optimized flat
    assert w == []


def test_monitor_ci_threshold_and_patience(tmp_path):
    mon = RewardHackingMonitor("hpsv2", ["pickscore"], verbose=False, log_file=tmp_path / "h.jsonl")
    assert mon.update(0, {"hpsv2": 1.0, "pickscore": 0.5, "pickscore_ci": (0.3, 0.7)}) == []  # tau = 0.2
    assert mon.update(1, {"hpsv2": 2.0, "pickscore": 0.33}) == []                             # 0.17 < 0.2
    assert len(mon.update(2, {"hpsv2": 2.5, "pickscore": 0.25})) == 1
    assert (tmp_path / "h.jsonl").read_text().count("\n") == 1
    _, w = _run([1.0, 1.2, 1.4, 1.6], [0.5, 0.52, 0.45, 0.40], patience=2)
    assert len(w) == 1 and "step 30" in w[0]
    recs = [{"step": s, "hpsv2": o, "pickscore": h} for s, o, h in [(0, 1, .5), (1, 2, .3)]]
    assert len(scan_records(recs, "hpsv2", ["pickscore"])) == 1
    with pytest.raises(ValueError, match="held-out"):
        RewardHackingMonitor("hpsv2", [])
