"""README.md is the operator's entry point: the two commands first, a quick start short
enough to read, and an index that names every page of the manual (the rest lives in
docs/)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# Long enough for the quick start and the index, short enough to stay one.
MOST_LINES = 250


def code_blocks(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S)]


def test_the_two_commands_come_first():
    assert code_blocks(README.read_text())[:2] == ["make dev", "make test"]


def test_the_readme_is_a_quick_start_not_the_whole_manual():
    assert len(README.read_text().splitlines()) <= MOST_LINES


def test_the_readme_indexes_every_page_of_the_manual():
    pages = [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "benchmarks" / "README.md"]
    text = README.read_text()
    unnamed = [str(p.relative_to(ROOT)) for p in pages if str(p.relative_to(ROOT)) not in text]
    assert unnamed == [], "README.md does not name these manual pages"
