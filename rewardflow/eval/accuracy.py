"""Reward-model accuracy against human preferences, each definition exactly as its benchmark defines it
(docs/rewards.md#accuracy). All functions are pure: they take human labels and model scores (lists / arrays) and return
numbers, so every definition is testable on a hand-made table.

Conventions
-----------
* A **pair label** ``h`` is ``+1`` (A preferred), ``-1`` (B preferred) or ``0`` (human tie); a model's pair
  decision is read from ``delta = s_A - s_B``.
* A **ranking** is a list of ranks, lower = better (``1`` = best, equal ranks = human tie), as HPD v2 ``rank`` and
  ImageRewardDB ``ranking``.

Definitions (sources in each function's docstring):

* :func:`pairwise_accuracy` — without ties: human ties dropped, a predicted exact tie (``delta == 0``) is wrong.
* :func:`ranking_micro_accuracy` — ImageReward test protocol: every non-tied human pair of every prompt, micro.
* :func:`ranking_macro_agreement` — HPD v2 ``inversion_score``: per prompt ``1 - discordant / C(k, 2)``, macro;
  model ties and human ties are not discordant.
* :func:`pickapic_accuracy` / :func:`tune_tie_threshold` — Pick-a-Pic tie-aware accuracy with half credit and a
  probability threshold chosen on the validation split.
* :func:`ties_matter_accuracy` — Deutsch et al. 2023 tie calibration (VideoGen-RewardBench).
* :func:`strict_tie_aware_accuracy` — MJ-Bench(-Video) strict (model tie = wrong) and tie-aware (model tie = 0.5).
* :func:`genai_bench_accuracy` — GenAI-Bench 4-way classification (plus the 3-way and w/o-tie variants).
* :func:`bootstrap_ci` / :func:`per_category` — percentile bootstrap with a fixed seed, per-category breakdown.
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Callable, Sequence

import numpy as np

PICKAPIC_THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(11))  # {0, 0.1, ..., 1} (eval_preference_predictor.py)
GENAI_CLASSES = ("A>B", "B>A", "A=B=Good", "A=B=Bad")
GENAI_VOTES = {"leftvote": "A>B", "rightvote": "B>A", "tievote": "A=B=Good", "bothbad_vote": "A=B=Bad"}


def _arr(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN/inf values; drop the items the reward could not score first")
    return a


def _pair_inputs(labels, deltas) -> tuple[np.ndarray, np.ndarray]:
    h, d = _arr(labels, "labels"), _arr(deltas, "deltas")
    if h.shape != d.shape:
        raise ValueError(f"{h.size} labels but {d.size} score differences")
    if not np.isin(h, (-1, 0, 1)).all():
        raise ValueError("pair labels must be +1 (A preferred), -1 (B preferred) or 0 (tie), got "
                         f"{sorted(set(h.tolist()) - {-1.0, 0.0, 1.0})[:5]}")
    return h, d


# ------------------------------------------------------------------------------------------------ pairwise
def pairwise_accuracy(labels, deltas) -> dict:
    """Pairwise accuracy **without ties** (ImageReward ``acc``; VideoAlign ``calc_accuracy.py:
    calc_accuracy_without_ties``): human ties are dropped; correct iff ``sign(delta) == label``; a predicted exact
    tie ``delta == 0`` counts as wrong (discordant). Returns ``{"accuracy", "n"}`` (``n`` = non-tied pairs)."""
    h, d = _pair_inputs(labels, deltas)
    keep = h != 0
    n = int(keep.sum())
    correct = int((h[keep] * d[keep] > 0).sum())
    return {"accuracy": correct / n if n else math.nan, "n": n}


def strict_tie_aware_accuracy(labels, deltas, eps: float = 0.0) -> dict:
    """MJ-Bench / MJ-BENCH-VIDEO (``aiming-lab/MJ-Video`` README; ``scripts/eval/eval_overall_*.py`` drop the
    human ``Same`` items): over non-tied human pairs, the model is *undecided* when ``|delta| <= eps``. **Strict**
    counts undecided predictions as wrong; **tie-aware** gives them 0.5. Returns ``{"strict", "tie_aware", "n",
    "undecided"}``."""
    h, d = _pair_inputs(labels, deltas)
    keep = h != 0
    h, d = h[keep], d[keep]
    n = int(h.size)
    undecided = np.abs(d) <= eps
    correct = (~undecided) & (h * d > 0)
    return {"strict": float(correct.sum() / n) if n else math.nan,
            "tie_aware": float((correct.sum() + 0.5 * undecided.sum()) / n) if n else math.nan,
            "n": n, "undecided": int(undecided.sum())}


# ------------------------------------------------------------------------------------------------ rankings
def _check_ranking(ranks, scores, i: int) -> tuple[np.ndarray, np.ndarray]:
    r, s = _arr(ranks, f"ranking {i}"), _arr(scores, f"scores of ranking {i}")
    if r.shape != s.shape:
        raise ValueError(f"ranking {i} has {r.size} ranks but {s.size} scores")
    return r, s


def ranking_micro_accuracy(rankings: Sequence[Sequence[float]], scores: Sequence[Sequence[float]]) -> dict:
    """ImageReward test protocol (``THUDM/ImageReward`` ``test.py:acc``; HPSv2 ``calc_ImageReward``): expand each
    prompt's list to all C(k, 2) pairs, skip pairs the humans ranked equal, count a pair correct iff the model orders
    it strictly the same way (a model tie is wrong), micro-average over all pairs of all prompts.
    Returns ``{"accuracy", "n"}`` (``n`` = counted pairs)."""
    correct = total = 0
    for i, (ranks, sc) in enumerate(zip(rankings, scores, strict=True)):
        r, s = _check_ranking(ranks, sc, i)
        for a, b in combinations(range(r.size), 2):
            if r[a] == r[b]:
                continue
            total += 1
            # lower rank = better: the model agrees when the better-ranked item has the strictly higher score
            correct += int((r[b] - r[a]) * (s[a] - s[b]) > 0)
    return {"accuracy": correct / total if total else math.nan, "n": total}


def ranking_macro_agreement(rankings: Sequence[Sequence[float]], scores: Sequence[Sequence[float]]) -> dict:
    """HPD v2 test protocol (``tgxs002/HPSv2`` ``hpsv2/src/training/train.py:inversion_score``): per prompt,
    ``1 - (#discordant pairs) / C(k, 2)`` where a pair is discordant only when the model and the humans order it
    strictly oppositely (model ties and human ties are *not* discordant), averaged over prompts (macro).
    Returns ``{"accuracy", "n"}`` (``n`` = prompts) and ``"per_prompt"``."""
    per = []
    for i, (ranks, sc) in enumerate(zip(rankings, scores, strict=True)):
        r, s = _check_ranking(ranks, sc, i)
        k = r.size
        if k < 2:
            raise ValueError(f"ranking {i} has {k} item(s); HPD v2 agreement needs at least 2 per prompt")
        disc = sum(1 for a, b in combinations(range(k), 2) if (r[a] - r[b]) * (s[a] - s[b]) > 0)
        # rank a > rank b (a worse) while score a > score b (model says a better): discordant
        per.append(1.0 - disc / (k * (k - 1) / 2))
    return {"accuracy": float(np.mean(per)) if per else math.nan, "n": len(per), "per_prompt": per}


# ------------------------------------------------------------------------------------------------ Pick-a-Pic
def pair_probs(scores_a, scores_b) -> tuple[np.ndarray, np.ndarray]:
    """Softmax over the two scores of each pair (PickScore ``eval_preference_predictor.py:infer_example`` applies
    ``softmax`` to the two ``logit_scale * cos`` scores), i.e. ``p_A = sigmoid(s_A - s_B)``."""
    a, b = _arr(scores_a, "scores_a"), _arr(scores_b, "scores_b")
    p0 = 1.0 / (1.0 + np.exp(-(a - b)))
    return p0, 1.0 - p0


def pickapic_scores(labels, p0, p1, threshold: float) -> np.ndarray:
    """Per-pair credit of Pick-a-Pic tie-aware accuracy: predict tie when ``|p0 - p1| <= threshold``, else the
    higher-probability image; 1 for an exact match, 0.5 when exactly one of {label, prediction} is a tie, else 0."""
    h = _arr(labels, "labels")
    p0, p1 = _arr(p0, "p0"), _arr(p1, "p1")
    pred = np.where(np.abs(p1 - p0) <= threshold, 0.0, np.where(p0 > p1, 1.0, -1.0))
    return np.where(pred == h, 1.0, np.where((pred == 0) | (h == 0), 0.5, 0.0))


def pickapic_accuracy(labels, p0, p1, threshold: float) -> dict:
    """Mean of :func:`pickapic_scores` (``calc_acc`` in PickScore ``trainer/scripts/eval_preference_predictor.py``).
    ``labels`` from ``label_0``: 1 -> +1, 0 -> -1, 0.5 -> 0 (tie)."""
    s = pickapic_scores(labels, p0, p1, threshold)
    return {"accuracy": float(s.mean()) if s.size else math.nan, "n": int(s.size), "threshold": float(threshold)}


def tune_tie_threshold(labels, p0, p1, thresholds: Sequence[float] = PICKAPIC_THRESHOLDS) -> tuple[float, list[float]]:
    """Pick the tie threshold on the validation split: the first maximiser of the tie-aware accuracy over
    ``thresholds`` (``np.argmax`` as the official script). Returns ``(threshold, accuracies)``."""
    accs = [pickapic_accuracy(labels, p0, p1, t)["accuracy"] for t in thresholds]
    return float(thresholds[int(np.argmax(accs))]), accs


# ------------------------------------------------------------------------------------------------ Ties Matter
def ties_stats(labels, deltas, eps: float) -> dict:
    """``C, D, T_h, T_m, T_hm`` at threshold ``eps`` (a model tie is ``|delta| <= eps``; ``eps < 0``: none)."""
    h, d = _pair_inputs(labels, deltas)
    mt = np.abs(d) <= eps
    ht = h == 0
    return {"C": int((~ht & ~mt & (h * d > 0)).sum()), "D": int((~ht & ~mt & (h * d <= 0)).sum()),
            "Th": int((ht & ~mt).sum()), "Tm": int((~ht & mt).sum()), "Thm": int((ht & mt).sum())}


def ties_matter_accuracy(labels, deltas) -> dict:
    """Accuracy with ties after tie calibration (Deutsch, Foster, Freitag 2023, arXiv 2305.14324, Sec. 4; used by
    VideoGen-RewardBench, ``KwaiVGI/VideoAlign`` ``calc_accuracy.py:calc_accuracy_with_ties``):
    ``acc(eps) = (C + T_hm) / (C + D + T_h + T_m + T_hm)`` with a model tie when ``|delta| <= eps``; the threshold
    is swept over the sorted distinct ``|delta|`` values and the maximum is reported (the smallest such eps on a
    draw). Every pair whose ``|delta|`` equals a candidate is a model tie at that candidate (the official loop also
    scores intermediate states inside a run of equal ``|delta|``; this one does not).
    Returns ``{"accuracy", "epsilon", "n"}``."""
    h, d = _pair_inputs(labels, deltas)
    n = h.size
    if n == 0:
        return {"accuracy": math.nan, "epsilon": math.nan, "n": 0}
    ad = np.abs(d)
    order = np.argsort(ad, kind="stable")
    ad, h, d = ad[order], h[order], d[order]
    # contribution of each pair to the numerator when it is / is not a model tie
    as_tie = (h == 0).astype(np.float64)                       # Thm counts, Tm does not
    as_pred = ((h != 0) & (h * d > 0)).astype(np.float64)      # C counts, D and Th do not
    tie_cum = np.cumsum(as_tie)
    pred_rest = as_pred.sum() - np.cumsum(as_pred)
    last = np.r_[ad[1:] != ad[:-1], True]  # end of each run of equal |delta|
    acc = (tie_cum + pred_rest)[last] / n
    k = int(np.argmax(acc))
    return {"accuracy": float(acc[k]), "epsilon": float(ad[last][k]), "n": int(n)}


# ------------------------------------------------------------------------------------------------ GenAI-Bench
def genai_predict(scores_a, scores_b, tie_eps: float = 0.0, good_threshold: float | None = None) -> list[str]:
    """4-way prediction of a scalar reward: ``A>B`` / ``B>A`` when ``|s_A - s_B| > tie_eps``, else ``A=B=Good`` if
    the pair's mean score ``>= good_threshold`` and ``A=B=Bad`` otherwise (default threshold: the median score of
    all media in the set)."""
    a, b = _arr(scores_a, "scores_a"), _arr(scores_b, "scores_b")
    if good_threshold is None:
        good_threshold = float(np.median(np.r_[a, b])) if a.size else 0.0
    out = []
    for x, y in zip(a, b):
        if abs(x - y) > tie_eps:
            out.append("A>B" if x > y else "B>A")
        else:
            out.append("A=B=Good" if (x + y) / 2 >= good_threshold else "A=B=Bad")
    return out


def genai_bench_accuracy(human: Sequence[str], pred: Sequence[str]) -> dict:
    """GenAI-Bench (TIGER-AI-Lab, ``README``: 4 labels ``A>B``, ``B>A``, ``A=B=Good``, ``A=B=Bad``; random ~25%):
    ``four_way`` = exact-class accuracy; ``three_way`` merges the two tie kinds into one class (UnifiedReward's
    "with tie" accuracy); ``without_ties`` keeps only A>B / B>A items (a tie prediction there is wrong).
    ``human`` takes the class names or the arena ``vote_type`` values (leftvote, rightvote, tievote, bothbad_vote)."""
    hu = [GENAI_VOTES.get(v, v) for v in human]
    bad = sorted({v for v in list(hu) + list(pred) if v not in GENAI_CLASSES})
    if bad:
        raise ValueError(f"unknown GenAI-Bench label(s) {bad}; expected one of {GENAI_CLASSES} or "
                         f"{tuple(GENAI_VOTES)}")
    if len(hu) != len(pred):
        raise ValueError(f"{len(hu)} human votes but {len(pred)} predictions")
    n = len(hu)
    merge = lambda v: "tie" if v.startswith("A=B") else v  # noqa: E731
    four = sum(a == b for a, b in zip(hu, pred))
    three = sum(merge(a) == merge(b) for a, b in zip(hu, pred))
    decided = [(a, b) for a, b in zip(hu, pred) if a in ("A>B", "B>A")]
    return {"four_way": four / n if n else math.nan, "three_way": three / n if n else math.nan,
            "without_ties": sum(a == b for a, b in decided) / len(decided) if decided else math.nan,
            "n": n, "n_without_ties": len(decided)}


# ------------------------------------------------------------------------------------------------ CIs, categories
def bootstrap_ci(metric: Callable[[np.ndarray], float], n_items: int, n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap CI of ``metric(indices)``: ``n_boot`` resamples of the ``n_items`` units (pairs, or
    prompts for ranking benchmarks) with replacement, from ``numpy.random.default_rng(seed)``; returns the
    ``alpha/2`` and ``1 - alpha/2`` percentiles (NaN resamples, e.g. with no non-tied pair, are left out)."""
    if n_items < 1 or n_boot < 1:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    vals = np.array([metric(rng.integers(0, n_items, n_items)) for _ in range(n_boot)], dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return math.nan, math.nan
    lo, hi = np.percentile(vals, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def per_category(categories: Sequence[str | None], metric: Callable[[np.ndarray], float]) -> dict[str, float]:
    """``{category: metric(indices of that category)}`` for every category present (``None`` is skipped)."""
    cats = list(categories)
    out = {}
    for c in sorted({c for c in cats if c is not None}):
        out[c] = metric(np.array([i for i, x in enumerate(cats) if x == c]))
    return out
