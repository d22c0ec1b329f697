"""Multi-process equivalence harness (tests/test_distributed.py).

``run_method(method, pipe_dir, out_dir, rank, world)`` builds a Trainer on the tiny toy pipeline, makes the data of
one optimizer step independent of how it is split over processes and runs one ``train_step``:

* the prompts: process ``r`` of ``world`` gets ``PROMPTS[r*b:(r+1)*b]`` (``b = len(PROMPTS) // world``), so 2 processes
  with batch b see exactly the prompts of 1 process with batch 2b (groups stay whole on one process);
* the noise: every random draw a method makes for the step (initial noise, SDE noise, DPO's (noise, t) per pair) is
  made for the *whole* batch from a fixed seed on every process, and each process keeps its own rows.

It returns the step's logged loss and the trainable gradient right before the optimizer step (after the all-reduce),
flattened. Run as a script under ``torchrun --nproc_per_node 2`` it does that for every method in argv and saves
``{out_dir}/{method}_rank{r}.pt`` (plus whether the trainable weights were identical on all processes at start).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PROMPTS = ["a red circle", "two blue squares", "a green triangle", "a yellow square"]
METHODS = {
    "flow_dpo": {"num_samples_per_prompt": 2, "timesteps_per_pair": 1, "beta": 500.0},
    "grpo": {"group_size": 2, "rollout_steps": 3, "beta": 0.04, "global_std": True},
    "draft": {"k": 1},
}
COMMON = {"optimizer": "sgd", "lr": 1.0, "grad_clip": 0.0, "weight_decay": 0.0, "lora_rank": 4, "sample_steps": 2,
          "max_steps": 1, "seed": 0}


@contextlib.contextmanager
def sharded_data(tr, rank: int, world: int):
    """Patch the trainer / method modules so that this process gets its shard of one fixed global batch."""
    from rewardflow.align.common import policy as _policy, samples as _samples
    from rewardflow.align.methods import dpo

    n_all = len(PROMPTS)
    b = n_all // world
    lo, hi = rank * b, (rank + 1) * b
    saved = []

    def patch(obj, name, value):
        saved.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    def fixed():
        return torch.Generator().manual_seed(1234)

    def prompts_sample(n, generator):
        assert n == b, (n, b)
        return PROMPTS[lo:hi]

    real_rollout, real_sample_and_score = _policy.rollout, _samples.sample_and_score
    real_noise = tr.gen.initial_noise
    full = [False]

    def rollout(gen, reward, prompts, steps, noise_level=None, generator=None, group_size=1, **kw):
        full[0] = True
        try:
            ro = real_rollout(gen, reward, PROMPTS, steps, noise_level, fixed(), group_size, **kw)
        finally:
            full[0] = False
        s = slice(lo * group_size, hi * group_size)
        return _policy.Rollout(ro.prompts[s], ro.latents[s], ro.timesteps, ro.log_probs[s], ro.images[s],
                               ro.rewards[s])

    def sample_and_score(gen, reward, prompts, group_size, steps, generator=None, **kw):
        full[0] = True
        try:
            sm = real_sample_and_score(gen, reward, PROMPTS, group_size, steps, generator=fixed(), **kw)
        finally:
            full[0] = False
        s = slice(lo * group_size, hi * group_size)
        return _samples.Samples(sm.prompts[s], sm.latents[s], sm.images[s], sm.rewards[s], group_size)

    def draw_noise_and_t(gen, x0, generator=None):
        n = x0.shape[0]  # one pair per prompt on every process (no ties with a continuous reward)
        g = fixed()
        noise = torch.randn((n * world, *x0.shape[1:]), generator=g)
        t = gen.sample_t(n * world, generator=g)
        s = slice(rank * n, (rank + 1) * n)
        return noise[s].to(x0.device, x0.dtype), t[s].to(x0.device)

    def initial_noise(batch, generator=None):
        if full[0]:  # inside a whole-batch rollout above: plain fixed noise
            return real_noise(batch, generator)
        return real_noise(batch * world, fixed())[rank * batch:(rank + 1) * batch]

    patch(tr.prompts, "sample", prompts_sample)
    patch(_policy, "rollout", rollout)
    patch(dpo, "sample_and_score", sample_and_score)
    patch(dpo, "draw_noise_and_t", draw_noise_and_t)
    patch(tr.gen, "initial_noise", initial_noise)
    try:
        yield
    finally:
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)
        tr.gen.__dict__.pop("initial_noise", None)
        tr.prompts.__dict__.pop("sample", None)


def run_method(method: str, pipe_dir, out_dir, rank: int = 0, world: int = 1) -> dict:
    from tests.trainer_utils import Brightness, make_trainer

    tr = make_trainer(Path(out_dir) / f"run_{method}", pipe_dir, method, reward=Brightness(),
                      batch_size=len(PROMPTS) // world, **COMMON, **METHODS[method])
    acc = tr.accelerator
    assert acc.num_processes == world, (acc.num_processes, world)
    flat = torch.cat([p.detach().reshape(-1) for p in tr.params])
    in_sync = bool((acc.gather(flat[None]) == flat[None]).all()) if world > 1 else True
    with torch.no_grad():  # non-zero LoRA B (same on every process) so every trainable tensor gets a gradient
        g = torch.Generator().manual_seed(7)
        for p in tr.params:
            p.add_(0.05 * torch.randn(p.shape, generator=g).to(p))
    grads: dict[str, torch.Tensor] = {}
    real_step = tr.optimizer.step

    def step(*a, **k):
        grads["flat"] = torch.cat([p.grad.detach().reshape(-1).clone() for p in tr.params])
        return real_step(*a, **k)

    tr.optimizer.step = step
    with sharded_data(tr, rank, world):
        rec = tr.train_step()
    return {"loss": rec["loss"], "grad": grads.get("flat"), "skipped": rec["skipped"], "in_sync": in_sync,
            "num_processes": acc.num_processes}


def main(argv: list[str]) -> None:
    import os

    out_dir, pipe_dir, methods = argv[0], argv[1], argv[2:]
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(1)
    for m in methods:
        if m == "fail_on_rank1":  # a failing rank must fail the whole launch with its error shown
            from accelerate import PartialState

            PartialState(cpu=True).wait_for_everyone()
            if rank == 1:
                raise RuntimeError("deliberate failure on rank 1")
            PartialState(cpu=True).wait_for_everyone()  # rank 0 blocks here until torchrun tears the group down
            continue
        if m == "timeout":  # collective_timeout_s: a collective waiting on a stuck rank fails instead of hanging
            import time

            from tests.trainer_utils import make_trainer

            tr = make_trainer(Path(out_dir) / "run_timeout", pipe_dir, "draft", collective_timeout_s=6)
            if rank == 1:
                time.sleep(60)  # stuck; torchrun stops it once rank 0 has failed
            t0 = time.time()
            try:
                tr.accelerator.reduce(torch.ones(1), reduction="sum")
            except Exception as e:  # report how long the collective waited, then fail the launch
                print(f"rank 0: collective failed after {time.time() - t0:.1f} s: {type(e).__name__}", flush=True)
                raise
            continue
        res = run_method(m, pipe_dir, out_dir, rank, world)
        torch.save(res, Path(out_dir) / f"{m}_rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1:])
