"""Tests for rewardflow.toy.world (the GenEval-in-miniature toy world)."""

from __future__ import annotations

import numpy as np
import pytest

from rewardflow.toy import world as W
from rewardflow.toy.world import (
    CATEGORIES,
    COLORS,
    POSITIONS,
    SHAPES,
    VOCAB,
    Obj,
    Scene,
    all_captions,
    detect_objects,
    hard_negative,
    oracle,
    oracle_batch,
    oracle_score,
    oracles,
    parse_caption,
    render,
    render_batch,
    sample_scenes,
    split_captions,
)

N = 500
SIZE = 32


# --------------------------------------------------------------------------- helpers


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an HxWx3 image (float), edge-replicated."""
    r = max(1, int(np.ceil(3 * sigma)))
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k /= k.sum()
    a = img.astype(np.float64)
    p = np.pad(a, ((r, r), (0, 0), (0, 0)), mode="edge")
    a = sum(k[i] * p[i : i + a.shape[0]] for i in range(2 * r + 1))
    p = np.pad(a, ((0, 0), (r, r), (0, 0)), mode="edge")
    return sum(k[i] * p[:, i : i + a.shape[1]] for i in range(2 * r + 1))


@pytest.fixture(scope="module")
def rendered():
    """500 random scenes over all categories (both splits) and their renders."""
    rng = np.random.default_rng(1234)
    scenes = sample_scenes(rng, N, split="all")
    images = render_batch(scenes, size=SIZE, rng=rng)
    return scenes, images


# --------------------------------------------------------------------------- vocabulary & grammar


def test_constants():
    assert list(COLORS) == ["red", "orange", "yellow", "green", "blue", "purple", "white"]
    assert COLORS["yellow"] == (235, 225, 30)
    assert SHAPES == ("circle", "square", "triangle")
    assert POSITIONS == ("top left", "top right", "bottom left", "bottom right", "center")
    assert CATEGORIES == ("single", "single_pos", "two_obj", "counting", "two_pos")
    assert VOCAB == sorted(set(VOCAB))
    words = {w for c in all_captions() for w in c.split()}
    assert words == set(VOCAB)


def test_canonical_captions():
    assert Scene((Obj("red", "circle"),), "single").caption == "a red circle"
    assert Scene((Obj("red", "circle", "top left"),), "single_pos").caption == "a red circle at the top left"
    assert (
        Scene((Obj("red", "circle"), Obj("blue", "square")), "two_obj").caption
        == "a red circle and a blue square"
    )
    assert Scene((Obj("red", "circle"),) * 2, "counting").caption == "two red circles"
    sc = Scene((Obj("red", "circle", "top left"), Obj("blue", "square", "bottom right")), "two_pos")
    assert sc.caption == "a red circle at the top left and a blue square at the bottom right"
    assert Scene((Obj("orange", "square", "center"),), "single_pos").caption == "an orange square at the center"


def test_invalid_scenes():
    with pytest.raises(ValueError):
        Scene((Obj("red", "circle"),) * 2, "two_obj")  # identical objects
    with pytest.raises(ValueError):
        Scene((Obj("red", "circle"), Obj("red", "square")), "counting")
    with pytest.raises(ValueError):
        Scene((Obj("red", "circle", "center"), Obj("red", "square", "center")), "two_pos")
    with pytest.raises(ValueError):
        Obj("pink", "circle")


def test_caption_space_sizes():
    sizes = {c: len(all_captions(c)) for c in CATEGORIES}
    assert sizes == {"single": 21, "single_pos": 105, "two_obj": 420, "counting": 21, "two_pos": 8820}
    caps = all_captions()
    assert caps == sorted(caps) and len(caps) == len(set(caps)) == sum(sizes.values())
    assert all_captions() == all_captions()  # deterministic


def test_parse_roundtrip_all_captions():
    for cat in CATEGORIES:
        for cap in all_captions(cat):
            sc = parse_caption(cap)
            assert sc.category == cat
            assert sc.caption == cap
            assert parse_caption(sc.caption) == sc
    for sc in W.all_scenes():
        assert parse_caption(sc.caption) == sc


def test_parse_errors():
    with pytest.raises(ValueError, match="pink"):
        parse_caption("a pink elephant")
    for bad in ["", "a red", "a red circle and", "two red circle", "red circle", "a red circle at the top",
                "a red circle at the center and a blue square", "a red circle and a red circle",
                "a red circle at the center and a blue square at the center", "a red circle a blue square"]:
        with pytest.raises(ValueError):
            parse_caption(bad)
    assert parse_caption("  A  Red circle ") == parse_caption("a red circle")
    assert parse_caption("a orange circle").caption == "an orange circle"


# --------------------------------------------------------------------------- split & sampling


def test_split():
    train, held = split_captions("train"), split_captions("heldout")
    assert not set(train) & set(held)
    assert sorted(train + held) == all_captions()
    counts = {c: (len(split_captions("train", c)), len(split_captions("heldout", c))) for c in CATEGORIES}
    print("split counts (train, heldout):", counts)
    assert counts == {
        "single": (17, 4),
        "single_pos": (85, 20),
        "two_obj": (272, 148),
        "counting": (17, 4),
        "two_pos": (5780, 3040),
    }
    train_scenes = [parse_caption(c) for c in train]
    assert {o.color for s in train_scenes for o in s.objects} == set(COLORS)
    assert {o.shape for s in train_scenes for o in s.objects} == set(SHAPES)
    assert not any(p in W.HELDOUT_PAIRS for s in train_scenes for p in s.pairs)
    assert all(any(p in W.HELDOUT_PAIRS for p in parse_caption(c).pairs) for c in held)


def test_sample_scenes():
    rng = np.random.default_rng(0)
    scenes = sample_scenes(rng, 2000)
    train = set(split_captions("train"))
    assert all(s.caption in train for s in scenes)
    cats = np.array([CATEGORIES.index(s.category) for s in scenes])
    frac = np.bincount(cats, minlength=5) / len(scenes)
    assert np.all(np.abs(frac - 0.2) < 0.04), frac
    held = sample_scenes(np.random.default_rng(0), 200, split="heldout", categories=["counting", "single"])
    assert {s.category for s in held} == {"counting", "single"}
    assert all(W.caption_split(s) == "heldout" for s in held)
    a = sample_scenes(np.random.default_rng(5), 50)
    b = sample_scenes(np.random.default_rng(5), 50)
    assert a == b


# --------------------------------------------------------------------------- renderer


def test_render_basic_and_layout():
    rng = np.random.default_rng(0)
    img = render(parse_caption("a red circle at the top left"), size=SIZE, rng=rng)
    assert img.shape == (SIZE, SIZE, 3) and img.dtype == np.uint8
    assert img[SIZE - 2:, :].max() == 0  # black background where nothing is drawn
    img, layout = render(parse_caption("two blue squares"), size=SIZE, rng=rng, return_layout=True)
    assert len(layout) == 2 and all(o.position in POSITIONS for o in layout)
    assert layout[0].position != layout[1].position
    dets = detect_objects(img)
    assert sorted(d["position"] for d in dets) == sorted(o.position for o in layout)
    a = render("a red circle and a blue square", rng=np.random.default_rng(3))
    b = render("a red circle and a blue square", rng=np.random.default_rng(3))
    assert np.array_equal(a, b)
    assert render_batch([parse_caption("a red circle")] * 3, size=48, rng=rng).shape == (3, 48, 48, 3)


# --------------------------------------------------------------------------- oracle


def test_pixel_colors_separate():
    """Pure, jittered and half-intensity palette colours map to themselves (yellow/white/orange!)."""
    rng = np.random.default_rng(0)
    names = list(COLORS)
    for i, name in enumerate(names):
        base = np.array(COLORS[name], dtype=np.float64)
        px = [base, 0.55 * base, 0.75 * base]
        px += [np.clip(base + rng.integers(-12, 13, size=3), 0, 255) for _ in range(200)]
        img = np.clip(np.round(np.array(px)), 0, 255).astype(np.uint8)[None]
        lab = oracles._classify_pixels(img)[0]
        assert np.all(lab == i), (name, [names[j] if j >= 0 else None for j in lab if j != i])
    assert oracles._classify_pixels(np.zeros((1, 1, 3), np.uint8))[0, 0] == -1
    # dim pixels (< half intensity) are background; so is cyan, which is no palette colour
    assert oracles._classify_pixels(np.array([[[90, 90, 90]]], np.uint8))[0, 0] == -1
    assert oracles._classify_pixels(np.array([[[128, 128, 128]]], np.uint8))[0, 0] == names.index("white")
    assert oracles._classify_pixels(np.array([[[0, 200, 200]]], np.uint8))[0, 0] == -1


def test_connected_components_match_bfs():
    """The vectorised labelling equals a plain BFS (4-connectivity, per class)."""
    rng = np.random.default_rng(3)
    for _ in range(30):
        cls = rng.integers(-1, 3, size=(int(rng.integers(5, 40)), int(rng.integers(5, 40))))
        lab = oracles._label_components(cls)
        H, Wd = cls.shape
        ref = np.full(cls.shape, H * Wd)
        for y in range(H):
            for x in range(Wd):
                if cls[y, x] < 0 or ref[y, x] < H * Wd:
                    continue
                root, todo = y * Wd + x, [(y, x)]
                ref[y, x] = root
                while todo:
                    cy, cx = todo.pop()
                    for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                        if 0 <= ny < H and 0 <= nx < Wd and cls[ny, nx] == cls[y, x] and ref[ny, nx] == H * Wd:
                            ref[ny, nx] = root
                            todo.append((ny, nx))
        assert np.array_equal(lab, ref)


def test_oracle_accepts_ground_truth(rendered):
    scenes, images = rendered
    ok = np.array([oracle(im, sc) for im, sc in zip(images, scenes)])
    rate = ok.mean()
    per_cat = {c: ok[[s.category == c for s in scenes]].mean() for c in CATEGORIES}
    print(f"oracle accuracy on ground-truth renders: {rate:.4f}  per category: {per_cat}")
    assert rate >= 0.99
    scores = np.array([oracle_score(im, sc) for im, sc in zip(images, scenes)])
    assert np.array_equal(scores == 1.0, ok)


def test_false_positive_other_caption(rendered):
    scenes, images = rendered
    rng = np.random.default_rng(7)
    fp = []
    for im, sc in zip(images, scenes):
        pool = W.all_scenes(sc.category)
        while True:
            other = pool[int(rng.integers(len(pool)))]
            if other.key != sc.key:  # not a re-ordering of the same request
                break
        fp.append(oracle(im, other))
    rate = float(np.mean(fp))
    print(f"false-positive rate (random other caption, same category): {rate:.4f}")
    assert rate <= 0.01


def test_false_positive_hard_negative(rendered):
    scenes, images = rendered
    rng = np.random.default_rng(8)
    fp = []
    for im, sc in zip(images, scenes):
        neg = hard_negative(sc, rng)
        assert neg.key != sc.key
        assert neg.category == sc.category or {neg.category, sc.category} <= {"single", "counting", "two_obj"}
        fp.append(oracle(im, neg))
    rate = float(np.mean(fp))
    print(f"false-positive rate (hard negatives): {rate:.4f}")
    assert rate <= 0.01


def test_robustness_blur_noise(rendered):
    scenes, images = rendered
    rng = np.random.default_rng(9)
    ok = []
    for im, sc in zip(images, scenes):
        x = gaussian_blur(im, 0.5) + rng.normal(0.0, 10.0, size=im.shape)
        x = np.clip(np.round(x), 0, 255).astype(np.uint8)
        ok.append(oracle(x, sc))
    rate = float(np.mean(ok))
    print(f"oracle accuracy after blur(0.5px) + noise(10/255): {rate:.4f}")
    assert rate >= 0.95


def test_black_image_fails_everything():
    black = np.zeros((SIZE, SIZE, 3), np.uint8)
    assert detect_objects(black) == []
    for sc in W.all_scenes():
        if sc.category != "two_pos":
            assert not oracle(black, sc)
    assert not any(oracle(black, c) for c in all_captions("two_pos")[::97])
    assert oracle_score(black, "a red circle") == 0.0


def test_extra_object_fails():
    rng = np.random.default_rng(11)
    for _ in range(20):
        img, layout = render("a red circle and a blue square", rng=rng, return_layout=True)
        assert oracle(img, "a red circle and a blue square")
        assert not oracle(img, "a red circle")
        assert not oracle(img, "a blue square")
        pos = layout[0].position
        assert not oracle(img, f"a red circle at the {pos}")
        assert oracle_score(img, "a red circle") == pytest.approx(0.5)
        img2 = render("two green triangles", rng=rng)
        assert oracle(img2, "two green triangles")
        assert not oracle(img2, "a green triangle")


def test_partial_credit():
    rng = np.random.default_rng(12)
    for _ in range(20):
        img = render("a red circle", rng=rng)
        assert oracle_score(img, "a red circle and a blue square") == pytest.approx(0.5)
        assert oracle_score(img, "a blue square and a red circle") == pytest.approx(0.5)
        assert oracle_score(img, "two red circles") == pytest.approx(0.5)
        assert oracle_score(img, "a blue square and a green triangle") == 0.0
        assert oracle_score(img, "a red circle") == 1.0
        img = render("a red circle and a blue square", rng=rng)
        assert oracle_score(img, "a red circle and a blue square") == 1.0
        assert oracle_score(img, "a red circle and a green square") == pytest.approx(0.5)


def test_oracle_batch_formats(rendered):
    scenes, images = rendered
    scenes, images = scenes[:64], images[:64]
    caps = [s.caption for s in scenes]
    rng = np.random.default_rng(13)
    negs = [hard_negative(s, rng).caption for s in scenes]
    ref = np.array([oracle(im, c) for im, c in zip(images, caps)])
    ref_neg = np.array([oracle(im, c) for im, c in zip(images, negs)])
    assert oracle_batch(images, caps).dtype == bool
    assert np.array_equal(oracle_batch(images, caps), ref)
    chw = images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    assert np.array_equal(oracle_batch(chw, caps), ref)
    assert np.array_equal(oracle_batch(chw, negs), ref_neg)
    assert np.array_equal(oracle_batch(chw.astype(np.float64), scenes), ref)
    assert np.array_equal(W.oracle_score_batch(chw, caps) == 1.0, ref)
    try:
        import torch
    except ImportError:
        return
    assert np.array_equal(oracle_batch(torch.from_numpy(chw), caps), ref)


def test_hard_negative_kinds():
    rng = np.random.default_rng(14)
    for sc in sample_scenes(rng, 300, split="all"):
        for _ in range(3):
            neg = hard_negative(sc, rng)
            assert neg.key != sc.key
            assert parse_caption(neg.caption) == neg
        assert W.corrupt_caption(sc, rng).key != sc.key
    # swapping colours of two same-coloured objects is not an edit
    sc = parse_caption("a red circle and a red square")
    for _ in range(50):
        assert hard_negative(sc, rng).key != sc.key
    # split-restricted negatives stay in the split
    for sc in sample_scenes(rng, 200, split="train"):
        assert W.caption_split(hard_negative(sc, rng, split="train")) == "train"
    assert hard_negative(parse_caption("a red circle"), rng).category in ("single", "counting")


def test_detect_objects_fields():
    img, layout = render("a yellow triangle at the center", rng=np.random.default_rng(15), return_layout=True)
    (d,) = detect_objects(img)
    assert d["color"] == "yellow" and d["shape"] == "triangle" and d["position"] == "center"
    x0, y0, x1, y1 = d["bbox"]
    assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
    assert 0.02 * SIZE * SIZE <= d["area"] <= (x1 - x0) * (y1 - y0)


def test_larger_size():
    rng = np.random.default_rng(16)
    scenes = sample_scenes(rng, 60, split="all")
    ok = [oracle(render(s, size=64, rng=rng), s) for s in scenes]
    assert np.mean(ok) >= 0.95
