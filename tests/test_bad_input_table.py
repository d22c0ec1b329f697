"""Bad inputs, as a table: each row is a command line (or an API call) that used to crash with a traceback or
silently produce garbage, and the one-line ``rewardflow: error: ...`` (exit status 2) it gives now. Each row was
checked to fail on the code before its fix. docs/usage/robustness.md lists them with their messages.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rewardflow.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse refused a flag's value while parsing
        return e.code


@pytest.fixture
def inputs(tmp_path, tiny_pipe_dir):
    """The files the table refers to as {name}."""
    p = {"tmp": tmp_path}
    cfg = ROOT / "configs" / "toy" / "rwr.yaml"
    p["cfg"] = cfg
    p["draft_cfg"] = ROOT / "configs" / "toy" / "draft.yaml"
    text = cfg.read_text()
    p["tab_yaml"] = tmp_path / "tab.yaml"
    p["tab_yaml"].write_text("method: rwr\nmodel: toy\n\tlr: 1.0e-4\n")
    p["broken_yaml"] = tmp_path / "broken.yaml"
    p["broken_yaml"].write_text("method: rwr\nprompts: [toy:train\nlr: 1\n")
    p["dup_yaml"] = tmp_path / "dup.yaml"
    p["dup_yaml"].write_text(text + "\nlr: 3.0e-4\n")
    p["list_yaml"] = tmp_path / "list.yaml"
    p["list_yaml"].write_text("- method: rwr\n")
    lora = tmp_path / "garbage_lora"
    lora.mkdir()
    (lora / "pytorch_lora_weights.safetensors").write_bytes(b"\x00\x01 this is not a safetensors file " * 8)
    p["garbage_lora"] = lora
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4\n{"step": 3}\n')
    p["bad_run"] = run
    run2 = tmp_path / "run2"
    run2.mkdir()
    (run2 / "eval.jsonl").write_text('{"step": 0, "eval_reward": 0.1}\n[1, 2]\n')
    p["list_run"] = run2
    run3 = tmp_path / "run3"
    run3.mkdir()
    (run3 / "summary.json").write_text('{"steps": 3,')
    p["bad_summary"] = run3
    p["missing_gpu"] = "cuda:99" if torch.cuda.is_available() else "cuda"
    return p


SAMPLE = ["sample", "--model", "toy", "--prompt", "a red circle", "--out", "{tmp}/s"]
NOISE_OPT = ["noise-opt", "--model", "toy", "--prompt", "a red circle", "--out", "{tmp}/n"]

# (id, argv, message fragments); every row exits with status 2 and prints one `rewardflow: error:` line
TABLE = [
    ("yaml-tab", ["train", "{tab_yaml}"],
     ["{tab_yaml}:3:1: found character '\\t' that cannot start any token", "YAML indents with spaces, not tabs"]),
    ("yaml-syntax", ["train", "{broken_yaml}"], ["{broken_yaml}:3:3: expected ',' or ']'"]),
    ("yaml-duplicate-key", ["train", "{dup_yaml}"], ["key 'lr' is given twice"]),
    ("yaml-not-a-mapping", ["train", "{list_yaml}"], ["a config must be a mapping of keys to values"]),
    ("yaml-bool-for-int", ["train", "{cfg}", "max_steps=true"],
     ["config key 'max_steps' expects int, got the boolean True"]),
    ("yaml-bool-for-float", ["train", "{cfg}", "lr=yes"], ["config key 'lr' expects float, got the boolean True"]),
    ("config-nan", ["train", "{cfg}", "lr=.nan"], ["config key 'lr' must be a finite number, got nan"]),
    ("config-inf", ["train", "{cfg}", "guidance_scale=.inf"], ["config key 'guidance_scale' must be a finite number"]),
    ("save-every-negative", ["train", "{cfg}", "save_every=-1"], ["save_every must be >= 0, got -1"]),
    ("keep-checkpoints-0", ["train", "{cfg}", "keep_checkpoints=0"], ["keep_checkpoints must be >= 1, got 0"]),
    ("log-every-0", ["train", "{cfg}", "log_every=0"], ["log_every must be >= 1, got 0"]),
    ("sample-steps-key-0", ["train", "{cfg}", "sample_steps=0"], ["sample_steps must be >= 1, got 0"]),
    ("adam-eps-0", ["train", "{cfg}", "adam_eps=0"], ["adam_eps must be > 0, got 0.0"]),
    ("method-key-0", ["train", "{draft_cfg}", "lv_samples=0"], ["draft: lv_samples must be >= 1, got 0"]),
    ("override-not-yaml", ["train", "{cfg}", "heldout_rewards=[a,"], ["override heldout_rewards=:1:"]),
    ("demo-config-tab", ["demo", "--config", "{tab_yaml}", "--out", "{tmp}/d"], ["{tab_yaml}:3:1:"]),
    ("demo-iterations-0", ["demo", "iterations=0", "--out", "{tmp}/d"], ["iterations must be >= 1, got 0"]),
    ("demo-lr-negative", ["demo", "lr=-1", "--out", "{tmp}/d"], ["lr must be > 0, got -1.0"]),
    ("demo-guidance-negative", ["demo", "guidance_scale=-2", "--out", "{tmp}/d"],
     ["guidance_scale must be >= 0, got -2.0"]),
    ("noise-opt-iterations-0", NOISE_OPT + ["--iterations", "0"],
     ["argument --iterations: expected an integer >= 1, got '0'"]),
    ("noise-opt-nrg-scale-nan", NOISE_OPT + ["--method", "nrg", "--nrg-scale", "nan"],
     ["argument --nrg-scale: expected a finite number, got 'nan' (not a finite number)"]),
    ("noise-opt-lr-0", NOISE_OPT + ["--lr", "0"], ["argument --lr: expected a finite number > 0, got '0'"]),
    ("noise-opt-n-0", NOISE_OPT + ["--method", "best-of-n", "--n", "0"], ["argument --n: expected an integer >= 1"]),
    ("sample-steps-0", SAMPLE + ["--steps", "0"], ["argument --steps: expected an integer >= 1, got '0'"]),
    ("sample-steps-negative", SAMPLE + ["--steps", "-3"], ["argument --steps: expected an integer >= 1, got '-3'"]),
    ("sample-guidance-nan", SAMPLE + ["--guidance", "nan"],
     ["argument --guidance: expected a finite number >= 0, got 'nan' (not a finite number)"]),
    ("sample-batch-size-0", SAMPLE + ["--batch-size", "0"], ["argument --batch-size: expected an integer >= 1"]),
    ("sample-height-on-toy", SAMPLE + ["--height", "64"],
     ["--height: toy is an embedded model with one fixed size and dtype; leave it out"]),
    ("sample-bogus-device", SAMPLE + ["--device", "gpu0"], ["--device 'gpu0' is not a device; available here: cpu"]),
    ("sample-missing-gpu", SAMPLE + ["--device", "{missing_gpu}"], ["--device {missing_gpu}: ", "available here: cpu"]),
    ("score-bogus-device", ["score", "--reward", "toy_oracle", "--images", "{tmp}", "--prompt", "x", "--device",
                            "tpu"], ["--device 'tpu' is not a device; available here: cpu"]),
    ("eval-per-category-0", ["eval", "--model", "toy", "--prompts", "toy:heldout", "--reward", "toy_oracle", "--out",
                             "{tmp}/e", "--per-category", "0"], ["argument --per-category: expected an integer >= 1"]),
    ("toy-train-save-every-negative", ["toy", "train-generator", "--out", "{tmp}/g", "--save-every", "-1"],
     ["argument --save-every: expected an integer >= 0, got '-1'"]),
    ("garbage-lora", SAMPLE + ["--lora", "{garbage_lora}"],
     ["{garbage_lora}/pytorch_lora_weights.safetensors is not a readable safetensors LoRA file"]),
    ("report-damaged-line", ["report", "{bad_run}"],
     ["{bad_run}/metrics.jsonl:2: not a JSON object", "fix or delete that line"]),
    ("report-not-an-object", ["report", "{list_run}"],
     ["{list_run}/eval.jsonl:2: expected a JSON object", "got list '[1, 2]'"]),
    ("report-damaged-summary", ["report", "{bad_summary}"], ["{bad_summary}/summary.json: not valid JSON"]),
]


@pytest.mark.parametrize("argv,fragments", [pytest.param(a, f, id=i) for i, a, f in TABLE])
def test_bad_input_gives_one_error_line_and_exit_2(inputs, capsys, argv, fragments):
    fill = lambda s: s.format(**inputs)
    rc = run_cli([fill(a) for a in argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert "Traceback" not in err
    errors = [ln for ln in lines if ln.startswith("rewardflow: error: ")]
    assert len(errors) == 1, err
    for f in fragments:
        assert fill(f) in errors[0], (errors[0], fill(f))


# ------------------------------------------------------------------------------------------------ API inputs
def _reward(name):
    from rewardflow.rewards.base import load_reward

    return load_reward(name)


@pytest.mark.parametrize("name", ["toy_oracle", "toy_clip", "jpeg_compressibility", "jpeg_incompressibility",
                                  "toy_video", "toy_video_oracle"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_rewards_refuse_non_finite_media(name, bad):
    r = _reward(name)
    shape = (3, 3, 32, 32) if r.modality == "image" else (3, 4, 3, 32, 32)
    prompts = ["a red circle" if r.modality == "image" else "a red circle moving left"] * 3
    media = torch.full(shape, 0.5)
    media[1].view(-1)[7] = bad
    with pytest.raises(ValueError, match=rf"{name}: 1 of 3 media contain NaN or inf values"):
        r(media, prompts)
    assert torch.isfinite(r(torch.full(shape, 0.5), prompts)).all()  # finite media still score


def test_generate_and_encode_prompts_refuse_a_bare_string(flow_gen):
    with pytest.raises(TypeError, match=r"prompts must be a list of strings, got the string 'a red circle'; wrap "
                                        r"one prompt in a list: \[prompt\]"):
        flow_gen.generate("a red circle", steps=2)
    with pytest.raises(TypeError, match="wrap one prompt in a list"):
        flow_gen.encode_prompts("a red circle")
    assert flow_gen.generate(["a red circle"], steps=2).shape[0] == 1


def test_score_prompt_file_has_the_one_comment_rule_and_ignores_a_bom(tmp_path, capsys):
    from PIL import Image

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i, c in enumerate([(255, 0, 0), (0, 0, 255)]):
        Image.new("RGB", (32, 32), c).save(imgs / f"{i}.png")
    clean = tmp_path / "clean.txt"
    clean.write_text("a red square\na blue square\n", encoding="utf-8")
    bom = tmp_path / "bom.txt"  # Windows Notepad: a byte-order mark, and a comment line as in `sample`'s files
    bom.write_bytes("# the two prompts, in file order\na red square\n\na blue square\n".encode("utf-8-sig"))
    rows = {}
    for f in (clean, bom):
        out = tmp_path / f"{f.stem}.json"
        assert main(["score", "--reward", "toy_clip", "--images", str(imgs), "--prompts", str(f), "--out",
                     str(out)]) == 0
        rows[f.stem] = json.loads(out.read_text())["rows"]
    assert [r["prompt"] for r in rows["bom"]] == ["a red square", "a blue square"]
    assert rows["bom"] == rows["clean"]


def test_shipped_configs_resolve_their_paths_from_any_working_directory(tmp_path, monkeypatch):
    from rewardflow.align.trainer import load_train_config
    from rewardflow.commands.train import preflight
    from rewardflow.pipelines.registry import resolve_adapter

    monkeypatch.chdir(tmp_path)  # not the repository root
    for name in sorted(p.name for p in (ROOT / "configs" / "toy").glob("*.yaml")):
        if name == "demo.yaml":
            continue
        tcfg, _ = load_train_config(ROOT / "configs" / "toy" / name)
        tcfg = preflight(tcfg)  # prompt files exist, the model is known: no model is loaded
        assert resolve_adapter(tcfg.model)["embedded"] or Path(tcfg.model).is_dir(), (name, tcfg.model)
    tcfg, _ = load_train_config(ROOT / "configs" / "toy" / "instructvideo.yaml")
    assert Path(tcfg.prompts).resolve() == (ROOT / "configs" / "toy" / "video_prompts_train.txt").resolve()
    tcfg, _ = load_train_config(ROOT / "configs" / "toy" / "ddpo.yaml")  # model: assets/toy/generator_eps
    assert Path(tcfg.model).resolve() == (ROOT / "assets" / "toy" / "generator_eps").resolve()
    # an override typed on the command line is relative to the working directory, where it was typed
    (tmp_path / "mine.txt").write_text("a red circle\n")
    tcfg, _ = load_train_config(ROOT / "configs" / "toy" / "instructvideo.yaml", ["prompts=mine.txt"])
    assert tcfg.prompts == "mine.txt"


def test_ctrl_c_gives_one_line_and_exit_130(monkeypatch, capsys):
    from rewardflow.commands import sample

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(sample, "run_sample", interrupted)
    assert main(["sample", "--model", "toy", "--prompt", "x", "--out", "o"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "rewardflow: interrupted" and "Traceback" not in err
