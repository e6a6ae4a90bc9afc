"""Every file of the project the manuals name exists: a test, module or script that moves
must take its mentions in README.md and docs/ along (docs/sso.md once cited a test that had
moved to tests/api/)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MANUALS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").rglob("*.md")),
    ROOT / "benchmarks" / "README.md",
    ROOT / "clients" / "python" / "README.md",
]
# The project's folders (not data/, where running installations keep their files).
FOLDERS = ("tests", "broker", "accounts", "sandbox", "clients", "benchmarks", "scripts")
FOLDERS += ("deploy", "docs", "templates")
MENTION = re.compile(rf"(?<![\w./-])((?:{'|'.join(FOLDERS)})/[\w./*-]*[\w*])")


def mentioned_paths(text: str) -> set[str]:
    """The project paths in a manual's text; a test's `::name` is not part of its path."""
    return {path.split("::")[0] for path in MENTION.findall(text)}


def manuals() -> list[Path]:
    return [manual for manual in MANUALS if manual.exists()]


@pytest.mark.parametrize("manual", manuals(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_path_a_manual_names_exists(manual: Path):
    missing = sorted(
        path
        for path in mentioned_paths(manual.read_text())
        if not (any(ROOT.glob(path)) if "*" in path else (ROOT / path).exists())
    )
    assert missing == [], f"{manual.relative_to(ROOT)} names paths that do not exist"


def test_the_manuals_name_tests_at_all():
    """The check above finds the mentions it is meant to check."""
    named = set().union(*(mentioned_paths(m.read_text()) for m in manuals()))
    assert "tests/client/test_examples.py" in named
    assert "tests/api/test_token_exchange_sandbox.py" in named


def test_a_moved_test_is_caught():
    assert mentioned_paths("(`tests/test_token_exchange_sandbox.py` does it)") == {
        "tests/test_token_exchange_sandbox.py"
    }
    assert not (ROOT / "tests/test_token_exchange_sandbox.py").exists()
    assert mentioned_paths("see tests/client/test_examples.py::test_cron, data/x") == {
        "tests/client/test_examples.py"
    }
