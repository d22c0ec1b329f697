"""`rewardflow report RUN_DIR`: every section present in the static HTML, images embedded, reward-hacking flags
from a constructed diverging run; a slow test renders the file in headless Chromium and checks the screenshot is
not blank (skipped only when no chromium binary is installed: `apt-get install -y chromium`)."""

import base64
import json
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from rewardflow.cli import main
from rewardflow.eval.report import SECTIONS, render_report


def _png(path, color):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((34, 68, 3), color, dtype=np.uint8)).save(path)


def _run_dir(tmp_path, diverging=True):
    """The trainer's run-directory layout (rewardflow/align/trainer.py): config.yaml, metrics.jsonl, eval.jsonl,
    samples/<tag>.png, reward_curve.png."""
    d = tmp_path / "run"
    d.mkdir()
    (d / "config.yaml").write_text("method: grpo\nlearning_rate: 0.0003\nreward: toy_clip\n")
    (d / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0 / s, "reward_mean": 0.1 * s,
                                                         "grad_norm": 0.5, "lr": 3e-4, "skipped": 0}) + "\n"
                                             for s in range(1, 31)))
    oracle = [0.50, 0.55, 0.40, 0.30] if diverging else [0.50, 0.55, 0.60, 0.62]
    (d / "eval.jsonl").write_text("".join(json.dumps({"step": s, "samples": s * 8, "eval_reward": 0.3 + 0.1 * i,
                                                      "oracle_accuracy": o}) + "\n"
                                          for i, (s, o) in enumerate(zip((0, 10, 20, 30), oracle))))
    _png(d / "samples" / "step_0000000.png", (200, 30, 30))
    _png(d / "samples" / "step_0000030.png", (30, 30, 200))
    _png(d / "reward_curve.png", (240, 240, 240))
    return d


def test_report_contains_every_section(tmp_path, capsys):
    d = _run_dir(tmp_path)
    assert main(["report", str(d)]) == 0
    out = d / "report.html"
    assert f"wrote {out}" in capsys.readouterr().out
    html = out.read_text()
    for s in SECTIONS:
        assert f'<section id="{s}">' in html
    assert "learning_rate: 0.0003" in html                       # resolved config
    assert html.count("data:image/png;base64,") == 3             # curve + before + after grids, embedded
    blob = base64.b64encode((d / "samples" / "step_0000000.png").read_bytes()).decode()
    assert blob in html and "before: step_0000000.png" in html and "after: step_0000030.png" in html
    assert "<svg" in html and "polyline" in html                 # inline curves from the logs
    assert "<th>oracle_accuracy</th>" in html and "<th>reward_mean</th>" in html  # eval + training tables
    # eval_reward rises 0.4 -> 0.5 while the held-out oracle falls 0.55 -> 0.40 (> 5% of 0.5): flagged at step 20
    assert "reward-hacking warning at step 20" in html and "oracle_accuracy" in html


def test_report_healthy_run_and_live_monitor_flags(tmp_path):
    d = _run_dir(tmp_path, diverging=False)
    html = render_report(d).read_text()
    assert "No divergence" in html and "reward-hacking warning" not in html
    (d / "hacking.jsonl").write_text(json.dumps({"step": 7, "held_out": "heldout_pickscore",
                                                 "message": "[rewardflow] reward-hacking warning at step 7: x"}) + "\n")
    html = render_report(d, tmp_path / "r.html").read_text()
    assert "warning at step 7" in html


def test_report_without_held_out_signals_says_not_monitored_and_captions_grids(tmp_path):
    d = _run_dir(tmp_path)
    (d / "eval.jsonl").write_text("".join(json.dumps({"step": s, "eval_reward": 0.3 + 0.01 * s}) + "\n"
                                          for s in (0, 30)))
    html = render_report(d).read_text()
    assert "Not monitored." in html and "No held-out reward ran" in html and "No divergence" not in html
    assert "not monitored (no held-out reward)" in html  # the summary table says it too
    (d / "eval.jsonl").unlink()
    assert "No evaluation ran" in render_report(d).read_text()
    # samples/manifest.json (as the trainer writes it): each grid captioned with its prompts in grid order
    (d / "samples" / "manifest.json").write_text(json.dumps({"images": [
        {"file": "step_0000000.png", "prompts": ["a red circle", "two <blue> squares"], "nrow": 8, "step": 0}]}))
    html = render_report(d).read_text()
    assert "<ol><li>a red circle</li><li>two &lt;blue&gt; squares</li></ol>" in html


def test_report_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "run directory not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "does not look like a rewardflow run directory" in capsys.readouterr().err


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path):
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        pytest.skip("no chromium binary (apt-get install -y chromium)")
    d = _run_dir(tmp_path)
    html = render_report(d)
    shot = tmp_path / "shot.png"
    subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1000,1400", html.as_uri()],
                   check=True, timeout=120, capture_output=True)
    img = np.asarray(Image.open(shot).convert("RGB")).astype(np.float64)
    assert img.shape[:2] == (1400, 1000)
    # not blank: text, tables and the embedded grids give many non-white pixels and real contrast
    nonwhite = (img.min(axis=2) < 200).mean()
    assert nonwhite > 0.01 and img.std() > 10
    # the red "before" and blue "after" grids are on the page
    red = ((img[..., 0] > 150) & (img[..., 1] < 80) & (img[..., 2] < 80)).sum()
    blue = ((img[..., 2] > 150) & (img[..., 0] < 80) & (img[..., 1] < 80)).sum()
    assert red > 500 and blue > 500
