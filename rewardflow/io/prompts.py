"""Prompts: one reader for prompt files (every command uses it) and the prompt sources of training and evaluation.

Prompt files
    ``.txt`` (or any other suffix): one prompt per line; blank lines and lines whose first non-blank character is
    ``#`` are skipped. ``.jsonl``: one JSON object per line with a ``"prompt"`` field (GenEval metadata; the other
    fields are kept as the row's metadata). ``.json``: a media manifest (:mod:`rewardflow.io.manifest`, e.g. the
    ``manifest.json`` of ``rewardflow sample``): its prompts, once each, in prompt order. Files are read as UTF-8 with
    an optional byte-order mark.

Prompt sources (trainer keys ``prompts`` / ``eval_prompts``)
    ``SCHEME:ARG`` for a registered scheme (plugins register them, e.g. the toy world's ``toy:train`` /
    ``toy:heldout``), otherwise a prompt file. A source samples its groups equally often (a file is one group), lists
    its evaluation prompts, and may name evaluation hooks (:mod:`rewardflow.eval.hooks`) that apply to its prompts.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from rewardflow.io.manifest import manifest_prompts
from rewardflow.plugins import load_plugins


def read_prompt_rows(path: str | Path) -> list[dict]:
    """The rows of a prompt file: ``[{"prompt": ...}, ...]`` (``.jsonl`` rows keep their other fields)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path}")
    if path.suffix.lower() == ".json":
        return [{"prompt": p} for p in manifest_prompts(path)]
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    rows: list[dict] = []
    if path.suffix.lower() == ".jsonl":
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{path}:{n}: not a JSON object ({e}); use a .txt file for plain prompts") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise ValueError(f"{path}:{n}: a .jsonl prompt file needs a text 'prompt' field in every line")
            rows.append(row)
    else:
        rows = [{"prompt": ln.strip()} for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not rows:
        raise ValueError(f"no prompts in {path} (one prompt per line; '#' starts a comment line)")
    return rows


def read_prompt_file(path: str | Path) -> list[str]:
    """The prompts of a prompt file (see the module docstring for the format)."""
    return [r["prompt"] for r in read_prompt_rows(path)]


class PromptSource:
    """Prompts for training (:meth:`sample`) and evaluation (:meth:`eval_list`).

    ``groups``: lists of prompts; :meth:`sample` picks a group uniformly, then a prompt in it, so every group is
    drawn equally often (a file is one group). ``eval_hooks``: names of evaluation hooks that apply to these
    prompts (e.g. an exact oracle that knows them)."""

    eval_hooks: tuple[str, ...] = ()

    def __init__(self, spec: str, groups: Sequence[Sequence[str]]):
        self.spec = spec
        self.groups = [list(g) for g in groups if len(g)]
        if not self.groups:
            raise ValueError(f"prompt source {spec!r} has no prompts")

    @classmethod
    def from_file(cls, path: str | Path) -> "PromptSource":
        return cls(str(path), [read_prompt_file(path)])

    def sample(self, n: int, generator: torch.Generator) -> list[str]:
        out = []
        for _ in range(n):
            g = self.groups[int(torch.randint(len(self.groups), (1,), generator=generator))]
            out.append(g[int(torch.randint(len(g), (1,), generator=generator))])
        return out

    def eval_list(self, per_group: int, seed: int = 0) -> list[str]:
        """The evaluation prompts: every prompt, in order (a source with groups may pick ``per_group`` of each)."""
        return [p for g in self.groups for p in g]


_SOURCES: dict[str, Callable[[str], PromptSource]] = {}


def register_prompt_source(scheme: str, factory: Callable[[str], PromptSource]) -> None:
    """Make ``SCHEME:ARG`` a prompt source: ``factory(ARG)`` builds it (raising ValueError on a bad ARG)."""
    if scheme in _SOURCES:
        raise ValueError(f"prompt source scheme {scheme!r} is already registered")
    _SOURCES[scheme] = factory


def prompt_source_schemes() -> list[str]:
    load_plugins()
    return sorted(_SOURCES)


def load_prompt_source(spec: str) -> PromptSource:
    """``SCHEME:ARG`` for a registered scheme, else a prompt file (errors name the file or the known schemes)."""
    load_plugins()
    scheme, sep, arg = str(spec).partition(":")
    if sep and scheme in _SOURCES:
        return _SOURCES[scheme](arg)
    path = Path(spec)
    if not path.is_file():
        known = ", ".join(f"{s}:..." for s in sorted(_SOURCES))
        raise FileNotFoundError(f"prompt file not found: {path} (give a text file with one prompt per line, a .jsonl "
                                f"with a 'prompt' field{', or a registered source: ' + known if known else ''})")
    return PromptSource.from_file(path)
