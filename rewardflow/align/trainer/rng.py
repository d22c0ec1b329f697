"""The trainer's random streams and their state in a checkpoint.

Each process draws from three streams: torch's global RNG (dropout, LoRA init, methods' ``torch.randn`` without a
generator; CUDA's too when present), the prompt RNG (which prompts each step trains on: the data position) and the
sampling RNG handed to the method as ``MethodContext.rng`` (its noise). Their seeds depend on ``seed`` and the
process index, so no two processes draw the same prompts or noise; a checkpoint saves every stream of every process,
so a resumed run continues each of them exactly (docs/usage/robustness.md).
"""

from __future__ import annotations

import torch


def seed_process(seed: int, rank: int) -> tuple[torch.Generator, torch.Generator]:
    """Seed torch's global RNG for process ``rank`` and return its (prompt RNG, sampling RNG)."""
    torch.manual_seed(seed + rank)
    prompt_rng = torch.Generator().manual_seed(seed * 1000 + rank)
    sample_rng = torch.Generator().manual_seed(seed * 1000 + 500 + rank)
    return prompt_rng, sample_rng


def reseed_process(seed: int, rank: int, step: int, prompt_rng: torch.Generator,
                   sample_rng: torch.Generator) -> None:
    """Deterministic fresh streams for process ``rank`` resuming at ``step`` without a saved state of its own (a
    checkpoint written with another number of processes): distinct per process and per resume step."""
    s = seed * 1000 + rank + 1_000_003 * step
    torch.manual_seed(s)
    prompt_rng.manual_seed(s)
    sample_rng.manual_seed(s + 500)


def rng_state(generators: dict[str, torch.Generator | None]) -> dict[str, torch.Tensor]:
    """torch's global (and CUDA's) RNG state plus each named generator's, as tensors (``torch.load`` with
    ``weights_only=True`` reads them back)."""
    st = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    for k, g in generators.items():
        if g is not None:
            st[f"gen_{k}"] = g.get_state()
    return st


def set_rng_state(st: dict[str, torch.Tensor], generators: dict[str, torch.Generator | None]) -> None:
    """Restore what :func:`rng_state` saved (a generator missing from ``st`` keeps its state)."""
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(st["cuda"]))
    for k, g in generators.items():
        if g is not None and f"gen_{k}" in st:
            g.set_state(st[f"gen_{k}"])
