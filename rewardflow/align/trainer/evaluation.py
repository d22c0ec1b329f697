"""The trainer's evaluation: the held-out reward on fixed prompts and noise, the held-out (watched, never optimized)
rewards, the evaluation hooks' metrics and a sample grid, with the EMA weights swapped in when EMA is on."""

from __future__ import annotations

import contextlib

import torch

from rewardflow.align.trainer.reporting import save_image_grid
from rewardflow.eval.hooks import run_eval_hooks
from rewardflow.io.manifest import append_manifest_row


class EvaluationMixin:
    """The :class:`~rewardflow.align.trainer.loop.Trainer`'s evaluation methods (it provides ``config``,
    ``accelerator``, ``sharding``, ``gen``, ``method``, ``reward``, ``heldout``, ``eval_source``,
    ``eval_hook_names``, ``trains_generator``, ``ema``, ``params``, ``step``, ``samples_seen``, ``run_dir`` and
    ``reporter``)."""

    @torch.no_grad()
    def evaluate(self, tag: str | None = None) -> dict[str, float]:
        """Mean reward on the held-out prompts (fixed noise), the evaluation hooks' metrics, a sample grid.
        Runs with the EMA weights when EMA is on; leaves every RNG untouched."""
        main = self.accelerator.is_main_process
        # sharded parameters: every process takes part in each forward pass, process 0 keeps the result
        if self.eval_source is None or not (main or self.sharding.shards_params):
            return {}
        c = self.config
        prompts = self.eval_source.eval_list(c.eval_per_category, seed=0)
        if not self.trains_generator:  # the generator is frozen: the method reports on its own module
            with torch.random.fork_rng(devices=[]), self._ema_weights():
                return {"step": self.step, "samples": self.samples_seen, **self.method.evaluate(prompts)}
        with torch.random.fork_rng(devices=[]), self._ema_weights(), self.sharding.eval_autocast():
            was_training = self.gen.denoiser.training
            self.gen.denoiser.eval()
            noise = torch.randn((len(prompts), *self.gen.latent_shape), generator=torch.Generator().manual_seed(0))
            imgs = torch.cat([self.gen.generate(prompts[i:i + 50], c.sample_steps,
                                                noise=noise[i:i + 50].to(self.gen.device, self.gen.dtype))
                              for i in range(0, len(prompts), 50)]).float()
            self.gen.denoiser.train(was_training)
        if not main:
            return {}
        out: dict[str, float] = {"step": self.step, "samples": self.samples_seen}
        if self.reward is not None:
            r = torch.cat([self.reward(imgs[i:i + 50].to(self.accelerator.device), prompts[i:i + 50]).float().cpu()
                           for i in range(0, len(prompts), 50)])
            out["eval_reward"] = float(r[torch.isfinite(r)].mean()) if torch.isfinite(r).any() else float("nan")
        for name, rw in self.heldout.items():  # held-out rewards: watched for reward hacking, never optimized
            r = torch.cat([rw(imgs[i:i + 50].to(self.accelerator.device), prompts[i:i + 50]).float().cpu()
                           for i in range(0, len(prompts), 50)])
            out[f"heldout_{name}"] = float(r[torch.isfinite(r)].mean()) if torch.isfinite(r).any() else float("nan")
        out.update(run_eval_hooks(self.eval_hook_names, imgs.cpu(), prompts))
        idx = list(range(0, len(prompts), max(1, len(prompts) // 16)))[:16]
        grid = self.run_dir / "samples" / f"{tag or f'step_{self.step:07d}'}.png"
        shown = [prompts[i] for i in idx]
        save_image_grid(imgs[idx], grid, nrow=8)
        # the grid's prompts (row-major) in samples/manifest.json: `rewardflow report` captions the grids with them
        append_manifest_row(grid.parent, {"file": grid.name, "prompts": shown, "nrow": 8, "step": self.step})
        if self.reporter is not None:  # tensorboard / wandb: the grid with its prompts
            self.reporter.log_samples(imgs[idx], shown, self.step)
        return out

    def _ema_weights(self):
        """Context: the EMA weights swapped into the trainable parameters (no-op without EMA)."""
        if self.ema is None:
            return contextlib.nullcontext()
        ema, params = self.ema, self.params

        @contextlib.contextmanager
        def swap():
            ema.store(params)
            ema.copy_to(params)
            try:
                yield
            finally:
                ema.restore(params)

        return swap()
