"""The contract between the trainer and a method: the trainer reads only what :class:`Method` declares (no
``getattr`` on a method), counts samples with ``samples_per_prompt``, and a rollout kept in a ``RolloutReuse``
serves ``updates_per_rollout`` optimizer steps also when each step accumulates several ``collect()`` calls
(``grad_accum``). Checked end to end with a third-party method that records what the trainer asks of it."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from rewardflow.align import method as method_module
from rewardflow.align.common.policy import RolloutReuse
from rewardflow.align.method import Method, MethodContext
from rewardflow.config import option
from tests.trainer_utils import make_trainer

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class ProbeConfig:
    updates_per_rollout: int = option(1, "optimizer steps per rollout")


class Probe(Method):
    """Trains one scalar ``w`` with loss ``c * w`` per micro-batch; rollout ``n`` (the n-th drawn) holds two
    micro-batches with ``c = n`` and ``c = 10 n``, so every gradient is known by hand."""

    name = "contract_probe"
    config_class = ProbeConfig
    trains_generator = False
    samples_per_prompt = 3

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self.module = torch.nn.Module()
        self.module.w = torch.nn.Parameter(torch.zeros(()))
        self.reuse = RolloutReuse(config.updates_per_rollout, slots=ctx.grad_accum)
        self.drawn, self.calls = 0, []

    def trainable_module(self):
        return self.module

    def _draw(self):
        self.drawn += 1
        n = self.drawn
        return [{"id": n, "c": torch.tensor(float(n))}, {"id": n, "c": torch.tensor(10.0 * n)}]

    def collect(self, prompts, step):
        return self.reuse.get(self._draw)

    def loss(self, batch, step):
        self.calls.append((step, batch["id"]))
        return batch["c"] * self.module.w, {}


@pytest.fixture
def probe(monkeypatch):
    monkeypatch.setitem(method_module._METHODS, "contract_probe", Probe)  # registered for this test only


def test_method_defaults_declare_one_update_per_rollout():
    m = Method(None, MethodContext(generator=None, reward=None))
    assert m.samples_per_prompt == 1 and m.updates_per_rollout == 1 and m.collected_new_samples()


def test_rollout_reuse_serves_each_call_of_a_step_its_own_rollout():
    r = RolloutReuse(updates=3, slots=2)
    made = iter(range(100))
    got, fresh = [], []
    for _ in range(3 * 2 * 2):  # two windows of 3 optimizer steps x 2 calls
        got.append(r.get(lambda: next(made)))
        fresh.append(r.fresh)
    assert got == [0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3]
    assert fresh == [True, True, False, False, False, False] * 2
    with pytest.raises(ValueError, match="slots >= 1"):
        RolloutReuse(2, slots=0)


def test_rollout_reuse_state_resumes_mid_window_and_reads_the_old_format():
    r = RolloutReuse(updates=2, slots=2)
    for i in range(2):
        r.get(lambda i=i: [{"x": torch.full((1,), float(i))}])
    again = RolloutReuse(updates=2, slots=2)
    again.load_state_dict(r.state_dict(), torch.device("cpu"))
    assert [float(again.get(lambda: 1 / 0)[0]["x"]) for _ in range(2)] == [0.0, 1.0] and not again.fresh
    assert float(again.get(lambda: [{"x": torch.full((1,), 7.0)}])[0]["x"]) == 7.0 and again.fresh
    old = RolloutReuse(updates=2)
    old.load_state_dict({"cache": [{"x": torch.ones(1)}], "served": 1}, torch.device("cpu"))  # earlier checkpoints
    assert float(old.get(lambda: 1 / 0)[0]["x"]) == 1.0
    changed = RolloutReuse(updates=2, slots=3)  # grad_accum changed between the runs: start a fresh window
    with pytest.warns(RuntimeWarning, match="grad_accum changed"):
        changed.load_state_dict(r.state_dict(), torch.device("cpu"))
    assert changed.calls == 0 and changed.cache == []


def test_trainer_with_grad_accum_reuses_each_rollout_for_whole_optimizer_steps(probe, tmp_path, tiny_pipe_dir):
    tr = make_trainer(tmp_path, tiny_pipe_dir, "contract_probe", updates_per_rollout=2, grad_accum=2, batch_size=2,
                      max_steps=4, optimizer="sgd", lr=1.0, weight_decay=0.0, grad_clip=0.0)
    e = tr.effective_batch()
    assert (e["samples_per_step"], e["updates_per_rollout"], e["new_samples_per_step"]) == (12, 2, 6)
    summary = tr.train()
    m = tr.method
    # four loss calls per step (2 collects x 2 micro-batches); rollouts 1, 2 serve steps 0 and 1, rollouts 3, 4
    # steps 2 and 3, each call of a step its own rollout
    assert m.calls == [(s, n) for s, ids in [(0, (1, 2)), (1, (1, 2)), (2, (3, 4)), (3, (3, 4))]
                       for n in ids for _ in range(2)]
    assert m.drawn == 4
    # the gradient of a step is the mean over its 4 micro-batches; SGD with lr 1: w -= sum(c) / 4
    g12, g34 = (1 + 10 + 2 + 20) / 4, (3 + 30 + 4 + 40) / 4
    assert float(m.module.w.detach()) == pytest.approx(-(2 * g12 + 2 * g34))
    recs = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["grad_norm"] for r in recs] == pytest.approx([g12, g12, g34, g34])
    # samples are counted only when drawn: 2 collects x 2 prompts x 3 samples at steps 0 and 2
    assert [r["samples"] for r in recs] == [12, 12, 24, 24] and summary["samples"] == 24


def test_the_trainer_reads_no_undeclared_method_attribute():
    """No ``getattr`` / ``hasattr`` on the method in the trainer package, and every attribute the trainer reads
    from the method is declared on :class:`Method`."""
    declared = {n for n in dir(Method) if not n.startswith("__")}
    used, probing = set(), []
    for f in sorted((ROOT / "rewardflow" / "align" / "trainer").glob("*.py")):
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr",
                                                                                                  "hasattr"):
                target = ast.unparse(node.args[0])
                if "method" in target or (target == "m" and f.name == "loop.py"):
                    probing.append(f"{f.name}: {ast.unparse(node)}")
            if isinstance(node, ast.Attribute):
                owner = ast.unparse(node.value)
                if owner in ("self.method", "self.method_cls") or (owner == "m" and f.name == "loop.py"):
                    used.add(node.attr)
    assert not probing, probing
    assert used and used <= declared, sorted(used - declared)
