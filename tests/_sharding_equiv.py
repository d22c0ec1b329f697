"""Sharded-strategy equivalence harness (tests/test_sharding.py).

``run_case(case, strategy, pipe_dir, out_dir, rank, world)`` builds a Trainer on the tiny toy pipeline with
``strategy`` and trains 3 optimizer steps on the data split of tests/_dist_equiv.py (process ``r`` gets its rows of
one fixed global batch, every random draw is made for the whole batch from a fixed seed), then gathers the whole
trainable weights. Run as a script under ``torchrun --nproc_per_node 2`` with ``STRATEGY:CASE`` arguments it saves
``{out_dir}/{strategy}_{case}.pt`` from process 0: the weights, the logged records and the memory report.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests._dist_equiv import PROMPTS, sharded_data  # noqa: E402

STEPS = 3
# one LoRA method (DRaFT: a differentiable chain, several denoiser calls per step, checkpointed in backward) and one
# full fine-tuning case (Flow-DPO, lora_rank=0: policy and frozen reference copy, both sharded under fsdp / zero3)
CASES = {
    "lora": ("draft", {"k": 1, "lora_rank": 4, "optimizer": "adamw", "lr": 1e-3}),
    "full": ("flow_dpo", {"num_samples_per_prompt": 2, "timesteps_per_pair": 1, "beta": 20.0, "lora_rank": 0,
                          "optimizer": "sgd", "lr": 0.1}),
}
COMMON = {"grad_clip": 1.0, "weight_decay": 0.0, "sample_steps": 2, "max_steps": STEPS, "seed": 0}


def run_case(case: str, strategy: str, pipe_dir, out_dir, rank: int = 0, world: int = 1) -> dict:
    from tests.trainer_utils import Brightness, make_trainer

    method, kw = CASES[case]
    tr = make_trainer(Path(out_dir) / f"run_{strategy}_{case}", pipe_dir, method, reward=Brightness(),
                      batch_size=len(PROMPTS) // world, strategy=strategy, **COMMON, **kw)
    assert tr.accelerator.num_processes == world and tr.config.strategy == strategy
    init = tr.sharding.full_trainable_state(tr.param_names, tr.params)
    if init is None:
        init = tr.trainable_state()
    recs = []
    with sharded_data(tr, rank, world):
        for _ in range(STEPS):
            recs.append(tr.train_step())
            tr.step += 1
    state = tr.sharding.full_trainable_state(tr.param_names, tr.params)
    if state is None:
        state = tr.trainable_state()
    return {"state": state, "init": init, "recs": recs, "memory": tr.memory, "num_processes": world,
            "optimizer_state_bytes_measured": tr.sharding.measured_optimizer_bytes()}


def run_resume(strategy: str, pipe_dir, out_dir, rank: int = 0, world: int = 1) -> dict:
    """Train 3 steps writing a checkpoint after step 1; a fresh Trainer resumed from it redoes steps 2 and 3. Returns
    both runs' records of steps 2-3 and whole trainable weights after step 3 (they must be identical)."""
    from tests.trainer_utils import Brightness, make_trainer

    kw = {"k": 1, "lora_rank": 4, "optimizer": "adamw", "lr": 1e-2, "grad_clip": 1.0, "sample_steps": 2,
          "max_steps": STEPS, "strategy": strategy, "keep_checkpoints": 1}
    run = Path(out_dir) / f"resume_{strategy}"
    a = make_trainer(run, pipe_dir, "draft", reward=Brightness(), **kw)
    recs_a = []
    for _ in range(STEPS):
        recs_a.append(a.train_step())
        a.step += 1
        if a.step == 1:
            ckpt = a.save_checkpoint()
    ckpt = a._main_value(ckpt)
    b = make_trainer(run, pipe_dir, "draft", reward=Brightness(), **{**kw, "resume": str(ckpt)})
    assert b.maybe_resume() and b.step == 1
    recs_b = []
    for _ in range(STEPS - 1):
        recs_b.append(b.train_step())
        b.step += 1
    state_a = a.sharding.full_trainable_state(a.param_names, a.params)
    state_b = b.sharding.full_trainable_state(b.param_names, b.params)
    files = sorted(p.relative_to(ckpt).as_posix() for p in Path(ckpt).rglob("*") if p.is_file()) if rank == 0 else []
    return {"a": (recs_a[1:], state_a), "b": (recs_b, state_b), "files": files}


def run_sd3_final(strategy: str, sd3_dir, out_dir, rank: int = 0, world: int = 1, lora_rank: int = 4) -> dict:
    """A tiny SD3 (transformer blocks sharded), LoRA or full fine-tuning (``lora_rank=0``), one step, then final/
    (gathered on process 0)."""
    from rewardflow.pipelines.registry import load_generator
    from tests.trainer_utils import Brightness, make_trainer

    gen = load_generator(str(sd3_dir), guidance_scale=1.0)
    tr = make_trainer(Path(out_dir) / f"sd3_{strategy}_{lora_rank}", None, "draft", reward=Brightness(),
                      generator=gen, prompts="toy:train", batch_size=1, lora_rank=lora_rank, k=1, max_steps=1,
                      optimizer="adamw", lr=1e-2 if lora_rank else 1e-4, strategy=strategy)
    rec = tr.train_step()
    tr.step += 1
    final = tr.save_final()
    state = tr.sharding.full_trainable_state(tr.param_names, tr.params)
    return {"state": state, "final": None if final is None else str(final), "rec": rec}


def main(argv: list[str]) -> None:
    import os

    out_dir, pipe_dir, jobs = Path(argv[0]), argv[1], argv[2:]
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(1)
    for job in jobs:
        strategy, case = job.split(":")
        if case == "resume":
            res = run_resume(strategy, pipe_dir, out_dir, rank, world)
        elif case.startswith(("sd3=", "sd3full=")):  # sd3=DIR / sd3full=DIR: the tiny SD3 pipeline directory
            kind, sd3 = case.split("=", 1)
            res = run_sd3_final(strategy, sd3, out_dir, rank, world, lora_rank=4 if kind == "sd3" else 0)
            case = kind
        else:
            res = run_case(case, strategy, pipe_dir, out_dir, rank, world)
        if rank == 0:
            torch.save(res, out_dir / f"{strategy}_{case}.pt")


if __name__ == "__main__":
    main(sys.argv[1:])
