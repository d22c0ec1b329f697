"""Scoring a reward-model benchmark with a reward, and the benchmark's official metrics (docs/rewards.md#accuracy).

:func:`score_benchmark` scores every distinct (media, prompt) of a :class:`Benchmark` once; :func:`evaluate_benchmark`
turns the scores into the metrics each benchmark reports (with bootstrap confidence intervals). The readers that
build a :class:`Benchmark` from a local copy of the dataset (formats, official column names) are in
:mod:`rewardflow.eval.benchmark_readers`; their public names are importable from here too.
"""

from __future__ import annotations

import hashlib
import io
import math
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

from rewardflow.eval import accuracy as acc
from rewardflow.eval.benchmark_readers import (
    FORMATS,
    MJBENCH_CONFIGS,
    MJV_ASPECTS,
    TABLE_SUFFIXES,
    VIDEOGEN_ASPECTS,
    Benchmark,
    Media,
    PairItem,
    RankItem,
    load_benchmark,
    read_table,
)
from rewardflow.io.images import open_image, pil_to_tensor
from rewardflow.io.progress import progress as progress_bar
from rewardflow.io.video import load_video

__all__ = ["FORMATS", "MJBENCH_CONFIGS", "MJV_ASPECTS", "PRIMARY_METRIC", "TABLE_SUFFIXES", "VIDEOGEN_ASPECTS",
           "Benchmark", "PairItem", "RankItem", "evaluate_benchmark", "load_benchmark", "load_media", "media_key",
           "read_table", "score_benchmark"]


# ------------------------------------------------------------------------------------------------ scoring
def media_key(m: Media) -> str:
    return m if isinstance(m, str) else "sha256:" + hashlib.sha256(m).hexdigest()


def decode_media(m: Media, modality: str):
    """Path or encoded bytes -> the media as decoded, what the official reward packages read: a ``PIL.Image`` in its
    stored mode, or a uint8 ``[T, 3, H, W]`` video (see ``Reward.score_files``)."""
    if modality == "video":
        if isinstance(m, bytes):
            with tempfile.NamedTemporaryFile(suffix=".mp4") as t:
                t.write(m)
                t.flush()
                video = load_video(t.name)
        else:
            video = load_video(m)
        return video.mul(255).round_().to(torch.uint8)  # the decoded 8-bit frames (load_video divided them by 255)
    if isinstance(m, bytes):
        im = Image.open(io.BytesIO(m))
        im.load()
        return im
    return open_image(m)


def load_media(m: Media, modality: str):
    """Path or encoded bytes -> ``[3, H, W]`` image or ``[T, 3, H, W]`` video float tensor in [0, 1]."""
    x = decode_media(m, modality)
    if modality == "video":
        return x.float().div_(255.0)
    return pil_to_tensor(x)


def _units(bench: Benchmark) -> list[tuple[Media, str]]:
    out: dict[tuple[str, str], tuple[Media, str]] = {}
    for it in bench.items:
        ms = it.media if isinstance(it, RankItem) else [it.a, it.b]
        for m in ms:
            out.setdefault((media_key(m), it.prompt), (m, it.prompt))
    return list(out.values())


def score_benchmark(bench: Benchmark, reward, batch_size: int = 8, device: str = "cpu",
                    progress: bool = False) -> dict[tuple[str, str], dict[str, float]]:
    """Score every distinct (media, prompt) of the benchmark once: ``{(media_key, prompt): {head: score}}``.
    The media are scored as decoded from their files (``Reward.score_files``: each reward's official
    preprocessing, no resizing here). ``device`` is where the caller put the reward."""
    if reward.modality != bench.modality:
        raise ValueError(f"{bench.format} holds {bench.modality}s but the reward {reward.name!r} scores "
                         f"{reward.modality}s")
    units = _units(bench)
    out: dict[tuple[str, str], dict[str, float]] = {}
    bar = None
    if progress:
        bar = progress_bar(total=len(units), unit=bench.modality, desc=f"scoring {reward.name}")
    for s in range(0, len(units), batch_size):
        chunk = units[s:s + batch_size]
        heads = reward.score_files([decode_media(m, bench.modality) for m, _ in chunk], [p for _, p in chunk])
        for j, (m, p) in enumerate(chunk):
            out[(media_key(m), p)] = {k: float(v[j]) for k, v in heads.items()}
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return out


# ------------------------------------------------------------------------------------------------ metrics
def _head_for(aspect: str, heads: dict[str, float], primary: str) -> float:
    """The reward head scoring an aspect: a head of the same name (case-insensitive; VideoReward's VQ/MQ/TA/
    Overall), else the reward's primary head."""
    low = {k.lower(): k for k in heads}
    return heads[low.get(aspect.lower(), primary)]


def _with_ci(value: float, fn: Callable[[np.ndarray], float], n: int, n_boot: int, seed: int) -> dict:
    lo, hi = acc.bootstrap_ci(fn, n, n_boot, seed) if n_boot > 0 else (math.nan, math.nan)
    return {"value": value, "ci_low": lo, "ci_high": hi}


def evaluate_benchmark(bench: Benchmark, scores: dict[tuple[str, str], dict[str, float]], primary_head: str,
                       n_boot: int = 1000, seed: int = 0, tie_threshold: float | None = None,
                       genai_tie_eps: float = 0.0) -> dict:
    """All official metrics of ``bench`` from per-media ``scores`` (as :func:`score_benchmark` returns), with
    percentile-bootstrap CIs (``n_boot`` resamples of pairs, or of prompts for ranking formats, ``seed`` fixed) and
    a per-category breakdown. Returns ``{"metrics": {name: {"value", "ci_low", "ci_high"}}, "per_category": {...},
    "details": {...}}``."""
    S = lambda m, p, asp="overall": _head_for(asp, scores[(media_key(m), p)], primary_head)  # noqa: E731
    items = bench.items
    cats = [it.category for it in items]
    res: dict[str, Any] = {"format": bench.format, "n_items": len(items), "metrics": {}, "per_category": {},
                           "details": {}, "notes": list(bench.notes)}
    M, PC, D = res["metrics"], res["per_category"], res["details"]

    def add(name, fn, n_units):
        idx = np.arange(n_units)
        M[name] = _with_ci(fn(idx), fn, n_units, n_boot, seed)
        pc = acc.per_category(cats, fn)
        if pc:
            PC[name] = pc

    if bench.kind == "ranking":
        ranks = [it.ranks for it in items]
        sc = [[S(m, it.prompt) for m in it.media] for it in items]
        micro = lambda ix: acc.ranking_micro_accuracy([ranks[i] for i in ix], [sc[i] for i in ix])["accuracy"]  # noqa
        macro = lambda ix: acc.ranking_macro_agreement([ranks[i] for i in ix], [sc[i] for i in ix])["accuracy"]  # noqa
        if bench.format == "hpdv2":
            add("pairwise_agreement", macro, len(items))
            add("micro_accuracy", micro, len(items))
        else:
            add("accuracy", micro, len(items))
        D["n_pairs"] = acc.ranking_micro_accuracy(ranks, sc)["n"]
        return res

    if bench.format == "genai-bench":
        a = np.array([S(it.a, it.prompt, "vote") for it in items])
        b = np.array([S(it.b, it.prompt, "vote") for it in items])
        human = [it.labels["vote"] for it in items]
        thr = float(np.median(np.r_[a, b]))
        pred = acc.genai_predict(a, b, genai_tie_eps, thr)
        for key in ("four_way", "three_way", "without_ties"):
            add(key, lambda ix, k=key: acc.genai_bench_accuracy([human[i] for i in ix], [pred[i] for i in ix])[k],
                len(items))
        D.update(tie_eps=genai_tie_eps, good_threshold=thr,
                 predicted=dict(zip(acc.GENAI_CLASSES, [pred.count(c) for c in acc.GENAI_CLASSES])))
        return res

    if bench.format == "pickapic":
        val = [i for i, it in enumerate(items) if (it.split or "").startswith("validation")]
        test = [i for i, it in enumerate(items) if not (it.split or "").startswith("validation")]
        if not test:
            raise ValueError(f"{bench.source}: no test pairs (every pair is in a validation split)")
        h = np.array([it.labels["overall"] for it in items], dtype=np.float64)
        p0, p1 = acc.pair_probs([S(it.a, it.prompt) for it in items], [S(it.b, it.prompt) for it in items])
        if tie_threshold is None:
            if not val:
                raise ValueError("pickapic: the tie threshold is chosen on the validation split, but no "
                                 "validation_unique pairs were found; add them (split column or a "
                                 "validation_unique file) or pass --tie-threshold")
            t, val_accs = acc.tune_tie_threshold(h[val], p0[val], p1[val])
            D["validation_accuracies"] = dict(zip(map(str, acc.PICKAPIC_THRESHOLDS), val_accs))
        else:
            t = float(tie_threshold)
        D.update(tie_threshold=t, n_validation=len(val), n_test=len(test))
        ht, q0, q1 = h[test], p0[test], p1[test]
        dt = q0 - q1
        cats = [cats[i] for i in test]
        add("tie_aware_accuracy", lambda ix: acc.pickapic_accuracy(ht[ix], q0[ix], q1[ix], t)["accuracy"], len(test))
        add("accuracy_without_ties", lambda ix: acc.pairwise_accuracy(ht[ix], dt[ix])["accuracy"], len(test))
        return res

    for asp in bench.aspects:
        sel = [i for i, it in enumerate(items) if asp in it.labels]
        if not sel:
            continue
        h = np.array([items[i].labels[asp] for i in sel], dtype=np.float64)
        d = np.array([S(items[i].a, items[i].prompt, asp) - S(items[i].b, items[i].prompt, asp) for i in sel])
        cats = [items[i].category for i in sel]
        pre = "" if asp == "overall" else f"{asp}."
        if bench.format == "videogen-rewardbench":
            add(f"{asp}.without_ties", lambda ix, h=h, d=d: acc.pairwise_accuracy(h[ix], d[ix])["accuracy"], len(sel))
            add(f"{asp}.with_ties", lambda ix, h=h, d=d: acc.ties_matter_accuracy(h[ix], d[ix])["accuracy"], len(sel))
            D[f"{asp}.epsilon"] = acc.ties_matter_accuracy(h, d)["epsilon"]
        else:  # mjbench, mjbench-video
            st = acc.strict_tie_aware_accuracy(h, d)
            if st["n"] == 0:
                continue
            add(f"{pre}strict", lambda ix, h=h, d=d: acc.strict_tie_aware_accuracy(h[ix], d[ix])["strict"], len(sel))
            add(f"{pre}tie_aware", lambda ix, h=h, d=d: acc.strict_tie_aware_accuracy(h[ix], d[ix])["tie_aware"],
                len(sel))
            D[f"{pre}n_without_human_ties"] = st["n"]
    return res


PRIMARY_METRIC = {"pickapic": "tie_aware_accuracy", "hpdv2": "pairwise_agreement", "imagerewarddb": "accuracy",
                  "videogen-rewardbench": "Overall.with_ties", "mjbench": "strict", "mjbench-video": "strict",
                  "genai-bench": "four_way"}
