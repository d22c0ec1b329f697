"""Pictures where users look: tensorboard / wandb get each evaluation's sample grid with its prompts, the run's
samples/manifest.json names them for `rewardflow report`."""

import sys
import types

import numpy as np
import torch
from PIL import Image as PILImage

from rewardflow.eval.report import render_report
from rewardflow.io.manifest import read_manifest
from trainer_utils import make_trainer


def _eval_prompts(tmp_path):
    f = tmp_path / "ev.txt"
    f.write_text("a red circle\ntwo blue squares\na green triangle\n")
    return str(f)


def test_tensorboard_gets_the_grid_and_its_prompts_at_each_eval(tmp_path, tiny_pipe_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    tr = make_trainer(run, tiny_pipe_dir, "draft", report_to="tensorboard", eval_prompts=_eval_prompts(tmp_path),
                      eval_at_start=True, eval_every=1, max_steps=2)
    tr.train()
    ea = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "tensors": 0})
    ea.Reload()
    imgs = ea.Images("eval/samples")
    assert [e.step for e in imgs] == [0, 1, 2] and (imgs[0].width, imgs[0].height) == (3 * 34 + 2, 36)
    texts = ea.Tensors("eval/prompts/text_summary")
    assert [e.step for e in texts] == [0, 1, 2]
    table = texts[0].tensor_proto.string_val[0].decode()
    assert "| 1 | 2 | two blue squares |" in table and "| 1 | 3 | a green triangle |" in table
    # the same grids on disk, with their prompts in samples/manifest.json; the report captions them
    man = read_manifest(run / "samples")
    assert [(r["file"], r["step"]) for r in man["images"]] == [("step_0000000.png", 0), ("step_0000001.png", 1),
                                                               ("step_0000002.png", 2)]
    assert all(r["prompts"] == ["a red circle", "two blue squares", "a green triangle"] for r in man["images"])
    html = render_report(run).read_text()
    assert "<li>a green triangle</li>" in html and "Not monitored." in html  # no held-out reward in this run


def test_wandb_gets_captioned_samples(tmp_path, tiny_pipe_dir, monkeypatch):
    logged = []

    class Image:
        def __init__(self, data, caption=None):
            self.data, self.caption = data, caption

    class Run:
        def log(self, d, step=None):
            logged.append((step, d))

        def finish(self):
            pass

    fake = types.SimpleNamespace(init=lambda **kw: Run(), Image=Image)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    run = tmp_path / "run"
    tr = make_trainer(run, tiny_pipe_dir, "draft", report_to="wandb", eval_prompts=_eval_prompts(tmp_path),
                      eval_at_start=True, max_steps=1)
    tr.train()
    media = [(step, d["eval/samples"]) for step, d in logged if "eval/samples" in d]
    assert [s for s, _ in media] == [0, 1]
    caps = [im.caption for im in media[-1][1]]
    assert caps == ["a red circle", "two blue squares", "a green triangle"]
    grid = np.asarray(PILImage.open(run / "samples" / "step_0000001.png"))
    first = (media[-1][1][0].data * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(grid[2:34, 2:34], first)  # the captioned image is the grid's first cell
