"""Regenerate the tiny benchmark samples in this folder (one sub-folder per ``rewardflow eval-rewards --format``).

    python assets/eval_samples/make_samples.py

Media are toy-world renders (32x32 PNG, 8-frame 32x32 mp4 written with PyAV), so the toy oracle's scores are known
by construction: a "good" medium is a render of the prompt (oracle score 1), a "bad" one renders another caption
(images: a different colour and shape, score 0; videos: the same object moving the opposite way, score 0.5). Tables
follow each benchmark's official column names (see rewardflow/eval/benchmarks.py); parquet media columns hold
bytes, these local JSON/CSV copies hold paths relative to the table. The tests recompute every expected accuracy by
hand from the (kind_A, kind_B, label) tuples listed below.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch

from rewardflow.io.images import save_image
from rewardflow.io.video import save_video
from rewardflow.toy import video as tv
from rewardflow.toy import world

HERE = Path(__file__).resolve().parent
RNG = np.random.default_rng(0)
BAD = {"a red circle": "a blue square", "a green triangle": "a yellow circle", "a blue square": "a red triangle",
       "a yellow circle": "a green square"}
PROMPTS = list(BAD)

# (prompt index, kind of A, kind of B, human label +1 A / -1 B / 0 tie)
PICKAPIC_VAL = [(0, "good", "bad", 1), (1, "bad", "good", -1), (2, "good", "good", 0), (3, "bad", "bad", 0)]
PICKAPIC_TEST = [(0, "good", "bad", 1), (1, "good", "bad", -1), (2, "bad", "bad", 0), (3, "good", "bad", 0),
                 (1, "bad", "good", -1)]
MJBENCH = {"alignment": [(0, "good", "bad", 1), (1, "bad", "good", -1), (2, "bad", "good", 1), (3, "bad", "bad", 1)],
           "safety": [(0, "good", "bad", 1), (1, "good", "good", 0), (2, "good", "bad", 1)]}
GENAI = [(0, "good", "bad", "leftvote"), (1, "bad", "good", "rightvote"), (2, "good", "good", "tievote"),
         (3, "bad", "bad", "bothbad_vote"), (0, "bad", "good", "leftvote"), (1, "good", "good", "bothbad_vote")]
# rankings: kinds per image and human ranks (1 = best)
HPDV2 = [(0, ["good", "bad", "bad"], [1, 2, 3]), (1, ["bad", "good", "good"], [3, 1, 2]),
         (2, ["good", "bad", "good"], [2, 1, 2])]
IMAGEREWARD = [(0, ["good", "bad", "bad", "good"], [1, 3, 3, 2]), (3, ["bad", "good", "bad"], [2, 1, 3])]
VIDEO_PROMPTS = ["a red circle moving left", "a blue square moving up", "a green triangle moving right"]
VIDEOGEN = [  # (prompt, kind A, kind B, Overall, VQ, MQ, TA)
    (0, "good", "bad", "A", "A", "same", "A"), (1, "bad", "good", "B", "same", "B", "B"),
    (2, "bad", "bad", "same", "same", "same", "A"), (0, "good", "bad", "B", "A", "A", "B"),
    (1, "good", "good", "same", "B", "same", "same")]
MJVIDEO = [(0, "good", "bad", "Video 0 better"), (1, "bad", "good", "Video 1 better"), (2, "good", "good", "Same"),
           (0, "bad", "bad", "Video 0 better"), (2, "good", "bad", "Video 1 better")]


def _image(folder: Path, prompt_i: int, kind: str, tag: str) -> str:
    cap = PROMPTS[prompt_i] if kind == "good" else BAD[PROMPTS[prompt_i]]
    x = torch.from_numpy(world.render(cap, size=32, rng=RNG)).permute(2, 0, 1).float() / 255.0
    name = f"{tag}_{kind}.png"
    save_image(x, folder / name)
    return name


def _video(folder: Path, prompt_i: int, kind: str, tag: str) -> str:
    vc = tv.parse_video_caption(VIDEO_PROMPTS[prompt_i])
    if kind == "bad":
        vc = tv.VideoCaption(vc.obj, tv.OPPOSITE[vc.direction])
    clip = torch.from_numpy(tv.render_clip(vc, frames=8, size=32, rng=RNG)).permute(0, 3, 1, 2).float() / 255.0
    name = f"{tag}_{kind}.mp4"
    save_video(clip, folder / name, fps=8, crf=0)
    return name


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def main() -> None:
    d = HERE / "pickapic"
    for split, table in (("validation_unique", PICKAPIC_VAL), ("test_unique", PICKAPIC_TEST)):
        rows = []
        for j, (p, ka, kb, h) in enumerate(table):
            a = _image(d / "images", p, ka, f"{split}_{j}_0")
            b = _image(d / "images", p, kb, f"{split}_{j}_1")
            l0 = {1: 1.0, -1: 0.0, 0: 0.5}[h]
            rows.append({"caption": PROMPTS[p], "jpg_0": f"images/{a}", "jpg_1": f"images/{b}", "label_0": l0,
                         "label_1": 1.0 - l0, "model_0": "toy", "model_1": "toy"})
        _jsonl(d / f"{split}.jsonl", rows)

    d = HERE / "mjbench"
    for cfg, table in MJBENCH.items():
        rows = []
        for j, (p, ka, kb, h) in enumerate(table):
            a = _image(d / "images", p, ka, f"{cfg}_{j}_0")
            b = _image(d / "images", p, kb, f"{cfg}_{j}_1")
            rows.append({"caption": PROMPTS[p], "image0": f"images/{a}", "image1": f"images/{b}",
                         "label": {1: 0, -1: 1, 0: 0.5}[h], "info": "toy"})
        _jsonl(d / f"{cfg}.jsonl", rows)

    d = HERE / "genai-bench"
    rows = []
    for j, (p, ka, kb, vote) in enumerate(GENAI):
        a = _image(d / "images", p, ka, f"{j}_left")
        b = _image(d / "images", p, kb, f"{j}_right")
        rows.append({"prompt": PROMPTS[p], "left_model": "toyA", "right_model": "toyB", "left_image": f"images/{a}",
                     "right_image": f"images/{b}", "vote_type": vote, "tstamp": 0.0})
    _jsonl(d / "image_generation.jsonl", rows)

    d = HERE / "hpdv2"
    rows = []
    for j, (p, kinds, ranks) in enumerate(HPDV2):
        rows.append({"prompt": PROMPTS[p], "image_path": [_image(d / "test", p, k, f"{j:03d}_{i}")
                                                          for i, k in enumerate(kinds)],
                     "rank": ranks, "raw_annotations": [], "user_hash": []})
    (d / "test.json").write_text(json.dumps(rows, indent=1))

    d = HERE / "imagerewarddb"
    rows = []
    for j, (p, kinds, ranks) in enumerate(IMAGEREWARD):
        rows.append({"id": f"toy{j}", "prompt": PROMPTS[p],
                     "generations": [f"images/{_image(d / 'images', p, k, f'{j}_{i}')}" for i, k in enumerate(kinds)],
                     "ranking": ranks})
    (d / "test.json").write_text(json.dumps(rows, indent=1))

    d = HERE / "videogen-rewardbench"
    (d / "videos").mkdir(parents=True, exist_ok=True)
    with open(d / "videogen-rewardbench.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path_A", "path_B", "A_model", "B_model", "prompt", "fps_A", "num_frames_A", "fps_B",
                    "num_frames_B", "VQ", "MQ", "TA", "Overall"])
        for j, (p, ka, kb, ov, vq, mq, ta) in enumerate(VIDEOGEN):
            a = _video(d / "videos", p, ka, f"{j}_A")
            b = _video(d / "videos", p, kb, f"{j}_B")
            w.writerow([f"videos/{a}", f"videos/{b}", "toyA", "toyB", VIDEO_PROMPTS[p], 8, 8, 8, 8, vq, mq, ta, ov])

    d = HERE / "mjbench-video"
    rows = []
    for j, (p, ka, kb, pref) in enumerate(MJVIDEO):
        a = _video(d / "videos", p, ka, f"{j}_0")
        b = _video(d / "videos", p, kb, f"{j}_1")
        rows.append({"caption": VIDEO_PROMPTS[p], "video_0_path": f"videos/{a}", "video_1_path": f"videos/{b}",
                     "category_preference": {"Alignment": pref, "Safety": "Same", "Fineness": pref,
                                             "Coherence & Consistency": pref, "Bias": "Same"},
                     "overall_preference": pref, "discard": False, "video_0_total_score": 1,
                     "video_1_total_score": 1})
    rows.append(dict(rows[0], discard=True))  # a discarded item: skipped by the reader
    (d / "test.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
