"""Preference data through Hugging Face `datasets`: one reader for offline DPO and `eval-rewards` (Pick-a-Pic
parquet as published, the shipped jsonl sample, chosen/rejected jsonl); a missing column fails before any model."""

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from rewardflow.align.methods.dpo import DPOConfig, PreferencePairs
from rewardflow.cli import main
from rewardflow.eval.benchmark_readers import load_benchmark
from rewardflow.io.images import load_image
from rewardflow.io.paths import assets_root
from rewardflow.io.preferences import PreferenceDataset, check_preference_columns

SAMPLE = assets_root() / "eval_samples" / "pickapic"


def _sample_rows(split="test_unique"):
    return [json.loads(ln) for ln in (SAMPLE / f"{split}.jsonl").read_text().splitlines() if ln.strip()]


def write_pickapic_parquet(path: Path, split="test_unique", drop=()):
    """The shipped toy pairs as Pick-a-Pic publishes them: one parquet shard, images as encoded bytes."""
    rows = _sample_rows(split)
    cols = {"caption": [r["caption"] for r in rows],
            "jpg_0": [(SAMPLE / r["jpg_0"]).read_bytes() for r in rows],
            "jpg_1": [(SAMPLE / r["jpg_1"]).read_bytes() for r in rows],
            "label_0": [float(r["label_0"]) for r in rows], "label_1": [float(r["label_1"]) for r in rows],
            "model_0": ["toy"] * len(rows), "model_1": ["toy"] * len(rows)}
    for c in drop:
        cols.pop(c)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), path)
    return rows


def _decode(b):
    arr = np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(arr).permute(2, 0, 1)


def test_parquet_jsonl_and_chosen_rejected_read_alike(tmp_path):
    rows = write_pickapic_parquet(tmp_path / "pp.parquet")
    pq_ds, js_ds = PreferenceDataset(tmp_path / "pp.parquet"), PreferenceDataset(SAMPLE / "test_unique.jsonl")
    want = [{1.0: 1, 0.0: -1, 0.5: 0}[r["label_0"]] for r in rows]
    assert pq_ds.labels() == js_ds.labels() == want and want.count(0) == 2
    for i, r in enumerate(rows):
        a, b = pq_ds[i], js_ds[i]
        assert a.prompt == b.prompt == r["caption"] and isinstance(a.a, bytes) and isinstance(b.a, str)
        assert torch.equal(_decode(a.a), load_image(b.a)) and torch.equal(_decode(a.b), load_image(b.b))
    # chosen/rejected pairs: the chosen one is preferred
    (tmp_path / "cr.jsonl").write_text("".join(json.dumps({"prompt": r["caption"], "chosen": str(SAMPLE / r["jpg_1"]),
                                                           "rejected": str(SAMPLE / r["jpg_0"])}) + "\n"
                                               for r in rows))
    cr = PreferenceDataset(tmp_path / "cr.jsonl")
    assert cr.labels() == [1] * 5 and cr[0].a == str(SAMPLE / rows[0]["jpg_1"])
    # offline DPO: ties dropped, winners first
    pairs = PreferencePairs(str(tmp_path / "pp.parquet"))
    assert len(pairs) == 3
    p, w, l = pairs.pair(1)  # row 1: label_0 = 0, image 1 wins
    assert p == rows[1]["caption"] and w == (SAMPLE / rows[1]["jpg_1"]).read_bytes()


def test_a_missing_column_is_named_before_any_model_loads(tmp_path, capsys):
    write_pickapic_parquet(tmp_path / "bad.parquet", drop=("jpg_1",))
    with pytest.raises(ValueError, match=r"missing column jpg_1 \(pickapic pairs need jpg_0, jpg_1, label_0\)"):
        check_preference_columns(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="dataset: .*bad.parquet: missing column jpg_1"):
        DPOConfig(pairs="offline", dataset=str(tmp_path / "bad.parquet"))
    # the CLI: --print-config loads no model and already names the column
    cfg = str(Path(__file__).parents[1] / "configs" / "toy" / "flow_dpo.yaml")
    assert main(["train", cfg, "pairs=offline", f"dataset={tmp_path / 'bad.parquet'}", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rewardflow: error: dataset: ") and "missing column jpg_1" in err
    (tmp_path / "cr.jsonl").write_text(json.dumps({"prompt": "p", "chosen": "a.png"}) + "\n")
    with pytest.raises(ValueError, match=r"missing column rejected \(chosen/rejected pairs need chosen, rejected\)"):
        check_preference_columns(tmp_path / "cr.jsonl")
    pq.write_table(pa.table({"caption": ["a"], "image_0_url": ["http://x"], "label_0": [1.0]}),
                   tmp_path / "urls.parquet")
    with pytest.raises(ValueError, match="_no_images"):
        check_preference_columns(tmp_path / "urls.parquet")
    # a dataset that does not exist yet: --print-config still shows the config (recipes name files to download);
    # the run itself stops at start, before the model loads, naming the key
    DPOConfig(pairs="offline", dataset=str(tmp_path / "none.parquet"))
    assert main(["train", cfg, "pairs=offline", f"dataset={tmp_path / 'none.parquet'}",
                 f"output_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rewardflow: error: dataset: not found: ") and "none.parquet" in err
    assert not (tmp_path / "run").exists()


def test_shard_folder_splits(tmp_path):
    """A Pick-a-Pic folder: DPO trains on the train shards only; eval-rewards reads every split by file name."""
    d = tmp_path / "pickapic" / "data"
    write_pickapic_parquet(d / "train-00000-of-00001.parquet", "test_unique")
    write_pickapic_parquet(d / "validation_unique-00000-of-00001.parquet", "validation_unique")
    assert len(PreferencePairs(str(tmp_path / "pickapic"))) == 3  # the 5 train rows less 2 ties
    bench = load_benchmark(tmp_path / "pickapic", "pickapic")
    assert sorted({it.split for it in bench.items}) == ["train", "validation_unique"] and len(bench.items) == 9


def test_train_offline_dpo_on_parquet_and_eval_rewards_on_the_same_file(tmp_path, capsys):
    f = tmp_path / "pairs.parquet"
    write_pickapic_parquet(f)
    cfg = str(Path(__file__).parents[1] / "configs" / "toy" / "flow_dpo.yaml")
    run = tmp_path / "run"
    assert main(["train", cfg, "pairs=offline", f"dataset={f}", "max_steps=2", "eval_prompts=", "batch_size=2",
                 "timesteps_per_pair=1", "report_to=none", f"output_dir={run}", "--quiet"]) == 0
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["skipped"] == 0 for r in rows)
    assert all(0.0 <= r["implicit_acc"] <= 1.0 for r in rows) and (run / "final").is_dir()
    capsys.readouterr()
    out = tmp_path / "acc.json"
    assert main(["eval-rewards", "--dataset", str(f), "--format", "pickapic", "--reward", "toy_clip",
                 "--tie-threshold", "0", "--bootstrap", "0", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert "pickapic: 5 pairs of images" in capsys.readouterr().out
    # the same numbers as the shipped jsonl copy of the same pairs
    js = tmp_path / "acc_js.json"
    assert main(["eval-rewards", "--dataset", str(SAMPLE / "test_unique.jsonl"), "--format", "pickapic", "--reward",
                 "toy_clip", "--tie-threshold", "0", "--bootstrap", "0", "--out", str(js)]) == 0
    assert doc["results"] == json.loads(js.read_text())["results"]
