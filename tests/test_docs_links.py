"""The documentation is self-contained: every relative link in README.md and docs/**/*.md resolves to a file of the
repository (and every ``#anchor`` to a heading or an ``<a id>`` of that file), every ``docs/...md#anchor`` that the
code cites resolves, and no file of the code cites a background note that is not in the repository (or a bare
section sign without a ``docs/`` path)."""

from __future__ import annotations

import re
import sys
import unicodedata
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CODE_DIRS = ("rewardflow", "tests", "benchmarks", "configs")
TEXT_SUFFIXES = {".py", ".pyi", ".yaml", ".yml", ".md", ".txt", ".sh", ".toml", ".cfg", ".ini", ".json", ".jsonl"}
SECTION_SIGN = "\u00a7"
# the private background notes (not part of the repository); names split so this file does not match itself
NOTE_NAMES = ("ALGO" "RITHMS", "REW" "ARDS", "TOY" "WORLD", "PE" "ERS", "DES" "IGN", "E" "NV")
NOTE_RE = re.compile(r"(?<![\w/.-])(?:" + "|".join(NOTE_NAMES) + r")\.md\b")
# [text](target) and ![alt](target); the target ends at the first space or ')' (titles are not used here)
INLINE_LINK_RE = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_DEF_RE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
CODE_DOC_REF_RE = re.compile(r"(?<![\w/.-])(docs/\w[\w./-]*\.md)(#[\w-]+)?")
ANCHOR_TAG_RE = re.compile(r"<a\s+[^>]*?(?:id|name)\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
HEADING_RE = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _markdown_files() -> list[Path]:
    files = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
    return [f for f in files if f.is_file()]


def _code_files() -> list[Path]:
    out = []
    for d in CODE_DIRS:
        for f in sorted((ROOT / d).rglob("*")):
            if f.is_file() and f.suffix in TEXT_SUFFIXES and "__pycache__" not in f.parts:
                out.append(f)
    return out


def _strip_code(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the prose: fenced code blocks dropped, inline code spans blanked."""
    out, fence = [], None
    for n, line in enumerate(text.splitlines(), 1):
        m = re.match(r"^\s{0,3}(`{3,}|~{3,})", line)
        if m:
            if fence is None:
                fence = m.group(1)[0] * len(m.group(1))
            elif m.group(1).startswith(fence):
                fence = None
            continue
        if fence is None:
            out.append((n, re.sub(r"`+[^`]*`+", lambda s: " " * len(s.group(0)), line)))
    return out


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: markup removed, lower case, characters other than letters, digits,
    ``_``, ``-`` and spaces dropped, spaces turned into hyphens."""
    text = re.sub(r"<[^>]+>", "", heading)                       # inline HTML (e.g. <a id=...></a>)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)        # links -> their text
    text = text.replace("`", "").replace("*", "")
    keep = []
    for ch in text.lower():
        cat = unicodedata.category(ch)
        if ch in " -" or cat[0] in "LM" or cat in ("Nd", "Pc"):
            keep.append(ch)
    return "".join(keep).replace(" ", "-")


@lru_cache(maxsize=None)
def anchors_of(path: Path) -> frozenset[str]:
    text = path.read_text(encoding="utf-8")
    found: set[str] = set(ANCHOR_TAG_RE.findall(text))
    counts: dict[str, int] = {}
    for _, line in _strip_code_keep_headings(text):
        m = HEADING_RE.match(line)
        if m:
            slug = github_slug(m.group(2))
            k = counts.get(slug, 0)
            found.add(slug if k == 0 else f"{slug}-{k}")
            counts[slug] = k + 1
    return frozenset(found)


def _strip_code_keep_headings(text: str) -> list[tuple[int, str]]:
    """Lines outside fenced code blocks, inline code kept (heading slugs include code text)."""
    out, fence = [], None
    for n, line in enumerate(text.splitlines(), 1):
        m = re.match(r"^\s{0,3}(`{3,}|~{3,})", line)
        if m:
            if fence is None:
                fence = m.group(1)[0] * len(m.group(1))
            elif m.group(1).startswith(fence):
                fence = None
            continue
        if fence is None:
            out.append((n, line))
    return out


def _links(path: Path) -> list[tuple[int, str]]:
    out = []
    for n, line in _strip_code(path.read_text(encoding="utf-8")):
        out += [(n, t) for t in INLINE_LINK_RE.findall(line)]
        m = REF_DEF_RE.match(line)
        if m:
            out.append((n, m.group(1)))
    return out


def _check_target(source: Path, target: str) -> str | None:
    """None if ``target`` (relative to ``source``) resolves, else the reason."""
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("//"):
        return None  # an external URL (http:, https:, mailto:) is not checked offline
    file_part, _, anchor = target.partition("#")
    dest = (source.parent / file_part).resolve() if file_part else source
    try:
        dest.relative_to(ROOT)
    except ValueError:
        return f"{target!r} points outside the repository"
    if not dest.exists():
        return f"{target!r}: {dest.relative_to(ROOT)} does not exist"
    if anchor:
        if dest.suffix != ".md" or not dest.is_file():
            return f"{target!r}: an anchor into {dest.relative_to(ROOT)}, which is not a markdown file"
        if anchor not in anchors_of(dest):
            return f"{target!r}: no heading or <a id> {anchor!r} in {dest.relative_to(ROOT)}"
    return None


def test_github_slug_rules():
    assert github_slug("Training-time alignment: `rewardflow train`") == "training-time-alignment-rewardflow-train"
    assert github_slug('<a id="flow-grpo"></a>Flow-GRPO') == "flow-grpo"
    assert github_slug("Image adapters: `sd`, `sdxl`, `sd3`, `flux`") == "image-adapters-sd-sdxl-sd3-flux"
    assert github_slug("Toy video world") == "toy-video-world"


def test_link_checker_finds_broken_links(tmp_path, monkeypatch):
    """The checker itself: a missing file and a missing anchor are reported, good links are not."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    good = tmp_path / "docs" / "a.md"
    good.write_text('# Title\n\n## <a id="x"></a>Section two\n')
    src = tmp_path / "docs" / "b.md"
    src.write_text("[ok](a.md#x) [ok2](a.md#section-two) [bad](a.md#nope) [gone](c.md) `[code](c.md)`\n"
                   "```\n[fenced](c.md)\n```\n[web](https://example.org/x)\n")
    anchors_of.cache_clear()
    problems = [p for _, t in _links(src) if (p := _check_target(src, t))]
    anchors_of.cache_clear()
    assert len(problems) == 2 and "nope" in problems[0] and "c.md" in problems[1]


@pytest.mark.parametrize("md", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_markdown_links_resolve(md):
    problems = [f"{md.relative_to(ROOT)}:{n}: {p}" for n, t in _links(md) if (p := _check_target(md, t))]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_code_doc_references_resolve():
    """Every ``docs/...md`` (with an optional ``#anchor``) that the code cites exists and has that anchor."""
    problems = []
    for f in _code_files():
        if f.suffix == ".md":
            continue
        for n, line in enumerate(f.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for doc, anchor in CODE_DOC_REF_RE.findall(line):
                reason = _check_target(ROOT / "README.md", doc + anchor)
                if reason:
                    problems.append(f"{f.relative_to(ROOT)}:{n}: {reason}")
    assert not problems, "code cites documentation that does not exist:\n" + "\n".join(problems)


def test_code_cites_no_document_outside_the_repository():
    """No reference to the private background notes, and no section sign without a docs/ path before it."""
    problems = []
    for f in _code_files():
        for n, line in enumerate(f.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if NOTE_RE.search(line):
                problems.append(f"{f.relative_to(ROOT)}:{n}: {line.strip()}")
                continue
            for m in re.finditer(SECTION_SIGN, line):
                if "docs/" not in line[: m.start()]:
                    problems.append(f"{f.relative_to(ROOT)}:{n}: {line.strip()}")
                    break
    assert not problems, (f"{len(problems)} line(s) cite a document that is not in the repository (write "
                          "docs/<page>.md#<anchor>, or 'Sec. N' for a paper's section):\n" + "\n".join(problems))


def test_readme_is_a_front_page_of_at_most_15_kb():
    """The README is the front page (what it is, install, demo, tests, a tour, pointers into docs/): at most 15 KB;
    detail belongs in docs/."""
    size = len((ROOT / "README.md").read_bytes())
    assert size <= 15_000, f"README.md is {size} bytes (> 15 KB): move detail into docs/"
