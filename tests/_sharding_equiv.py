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
    recs = []
    with sharded_data(tr, rank, world):
        for _ in range(STEPS):
            recs.append(tr.train_step())
            tr.step += 1
    state = tr.sharding.full_trainable_state(tr.param_names, tr.params)
    if state is None:
        state = tr.trainable_state()
    return {"state": state, "recs": recs, "memory": tr.memory, "num_processes": world}


def main(argv: list[str]) -> None:
    import os

    out_dir, pipe_dir, jobs = Path(argv[0]), argv[1], argv[2:]
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(1)
    for job in jobs:
        strategy, case = job.split(":")
        res = run_case(case, strategy, pipe_dir, out_dir, rank, world)
        if rank == 0:
            torch.save(res, out_dir / f"{strategy}_{case}.pt")


if __name__ == "__main__":
    main(sys.argv[1:])
