"""The package's shape: imports go one way down the layers (the import-linter contract in pyproject.toml, counting
imports inside functions), no package-level cycle, no oversized library file, and the core names no toy module."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "rewardflow"
MAX_LINES = 600


def test_import_layers_contract_is_kept():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe, "lint-imports (import-linter, in the test extra) is not installed"
    res = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "1 kept, 0 broken" in res.stdout


def _edges() -> set[tuple[str, str]]:
    edges = set()
    for f in PKG.rglob("*.py"):
        rel = f.relative_to(PKG).parts
        src = rel[0].removesuffix(".py")
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for n in names:
                parts = n.split(".")
                if parts[0] == "rewardflow" and len(parts) > 1 and parts[1] != src:
                    edges.add((src, parts[1]))
    return edges


def test_no_package_cycle_counting_function_level_imports():
    edges = _edges()
    units = {a for a, _ in edges} | {b for _, b in edges}
    reach = {u: {b for a, b in edges if a == u} for u in units}
    changed = True
    while changed:
        changed = False
        for u in units:
            new = set().union(*(reach[v] for v in reach[u] if v in reach)) if reach[u] else set()
            if not new <= reach[u]:
                reach[u] |= new
                changed = True
    cycles = sorted((a, b) for a in units for b in reach[a] if a < b and a in reach.get(b, set()))
    assert not cycles, f"package cycles: {cycles}"
    # the layering the contract states, checked independently: the core never imports the toy world
    core = {"io", "config", "plugins", "rewards", "pipelines", "eval", "align"}
    assert not {(a, b) for a, b in edges if a in core and b in ("toy", "commands", "cli", "testing")}


def test_no_library_file_over_the_size_limit():
    big = {str(f.relative_to(ROOT)): n for f in PKG.rglob("*.py")
           if (n := len(f.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not big, f"library files over {MAX_LINES} lines (split them by concern): {big}"
