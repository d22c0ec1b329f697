"""Run records: ``metrics.jsonl`` (always), tensorboard or wandb (scalars, and at each evaluation the sample grid
with its prompts), sample grids and the reward-curve plot."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image


class Reporter:
    """metrics.jsonl (always) + tensorboard / wandb."""

    def __init__(self, run_dir: Path, report_to: str, config: dict, run_name: str | None, main: bool,
                 resume_step: int | None = None):
        self.main = main
        self.tb = self.wb = None
        if not main:
            return
        self.metrics = open(run_dir / "metrics.jsonl", "a")  # noqa: SIM115 - open for the whole run
        if report_to == "tensorboard":
            try:
                from torch.utils.tensorboard import (
                    SummaryWriter,  # lazy: only with report_to=tensorboard
                )
            except ImportError as e:
                raise ImportError("report_to=tensorboard needs the `tensorboard` package (pip install "
                                  "tensorboard), or set report_to=none") from e
            # a resumed run redoes the steps after its checkpoint: purge their old events so curves do not double
            self.tb = SummaryWriter(str(run_dir / "tensorboard"),
                                    purge_step=resume_step + 1 if resume_step is not None else None)
        elif report_to == "wandb":
            try:
                import wandb  # lazy: an optional extra, only with report_to=wandb
            except ImportError as e:
                raise ImportError("report_to=wandb needs `pip install wandb` (or report_to=tensorboard)") from e
            self.wb = wandb.init(project="rewardflow", name=run_name, config=config, dir=str(run_dir))
            self._wandb = wandb

    def log(self, rec: dict, step: int, file=None) -> None:
        if not self.main:
            return
        (file or self.metrics).write(json.dumps(rec) + "\n")
        (file or self.metrics).flush()
        scalars = {k: v for k, v in rec.items() if isinstance(v, (int, float)) and k != "step"}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        if self.wb is not None:
            self.wb.log(scalars, step=step)

    def log_samples(self, images: torch.Tensor, prompts: list[str], step: int, nrow: int = 8) -> None:
        """An evaluation's samples ``[N, 3, H, W]`` (videos: first frame) with their prompts: tensorboard gets the
        grid (``eval/samples``, as ``samples/*.png``) and a table of the prompts by grid position
        (``eval/prompts``); wandb gets one captioned image per sample (``eval/samples``)."""
        if not self.main or (self.tb is None and self.wb is None):
            return
        images = (images[:, 0] if images.ndim == 5 else images).detach().float().cpu().clamp(0, 1)
        if self.tb is not None:
            self.tb.add_image("eval/samples", make_grid(images, nrow=nrow, padding=2, pad_value=1.0), step)
            rows = "".join(f"| {i // nrow + 1} | {i % nrow + 1} | {p.replace('|', '/')} |\n"
                           for i, p in enumerate(prompts))
            self.tb.add_text("eval/prompts", "| row | column | prompt |\n|---|---|---|\n" + rows, step)
        if self.wb is not None:
            self.wb.log({"eval/samples": [self._wandb.Image(img, caption=p) for img, p in zip(images, prompts)]},
                        step=step)

    def close(self) -> None:
        if not self.main:
            return
        self.metrics.close()
        if self.tb is not None:
            self.tb.close()
        if self.wb is not None:
            self.wb.finish()


def save_image_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int = 8) -> None:
    """images [B,3,H,W] (or video [B,T,3,H,W]: first frame) in [0, 1] -> one PNG grid."""
    if images.ndim == 5:
        images = images[:, 0]
    save_image(images.float().cpu().clamp(0, 1), str(path), nrow=nrow, padding=2, pad_value=1.0)


def plot_reward_curve(run_dir: str | os.PathLike) -> Path | None:
    """``reward_curve.png`` from metrics.jsonl (train ``reward_mean``) and eval.jsonl (held-out reward, oracle)."""
    # lazy: the headless Agg backend must be chosen before pyplot is first imported
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: after matplotlib.use (see above)

    run_dir = Path(run_dir)
    read = lambda f: [json.loads(ln) for ln in f.read_text().splitlines() if ln.strip()] if f.is_file() else []
    train = [r for r in read(run_dir / "metrics.jsonl") if "reward_mean" in r]
    ev = [r for r in read(run_dir / "eval.jsonl") if "eval_reward" in r]
    if not train and not ev:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if train:
        ax.plot([r["step"] for r in train], [r["reward_mean"] for r in train], lw=1, alpha=0.7,
                label="train reward (on-policy samples)")
    if ev:
        ax.plot([r["step"] for r in ev], [r["eval_reward"] for r in ev], "o-", label="held-out reward")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("reward")
    if ev and "oracle_accuracy" in ev[0]:
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in ev], [r["oracle_accuracy"] for r in ev], "s--", color="tab:green",
                 label="held-out oracle accuracy")
        ax2.set_ylabel("oracle accuracy")
        ax2.legend(loc="lower right", fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    out = run_dir / "reward_curve.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
