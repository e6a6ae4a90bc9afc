"""Dependencies are pinned for real: every package the code imports is named in a human-edited
requirements file (`requirements.in` for the broker, `requirements-dev.in` for the tests,
the sandbox, the benchmarks, the scripts and the client package), and the locks compiled from
them (`make lock`) pin every package, transitive ones included, to one version with hashes;
production installs from `requirements.txt` alone, so it holds the runtime's and no more."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
from packaging.markers import Marker

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_CODE = ["broker", "accounts", "manage.py", "gunicorn.conf.py"]
DEV_CODE = ["tests", "sandbox", "benchmarks", "scripts", "clients/python/src"]
# Packages of this repository imported by their own name (pytest puts tests/ on sys.path).
LOCAL = {"broker", "accounts", "sandbox", "tests", "benchmarks", "scripts", "broker_client"}
LOCAL |= {path.stem for path in (ROOT / "tests").glob("*.py")}
LOCAL |= {path.stem for path in (ROOT / "scripts").glob("*.py")}  # one script imports another


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(path: Path) -> dict[str, str]:
    """Name -> version of each `name==version` line of a requirements file (extras and
    markers dropped); other lines (options, comments, hashes) are skipped."""
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)", line)
        if match:
            pins[normalized(match[1])] = match[3]
    return pins


def imported_modules(paths: list[str]) -> dict[str, str]:
    """Top-level third-party module -> a file that imports it (absolute imports only)."""
    found: dict[str, str] = {}
    for entry in paths:
        base = ROOT / entry
        files = [base] if base.is_file() else sorted(base.rglob("*.py"))
        for path in files:
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in LOCAL:
                        found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def unpinned_imports(paths: list[str], pinned: set[str]) -> list[str]:
    distributions = importlib.metadata.packages_distributions()
    missing = []
    for module, where in sorted(imported_modules(paths).items()):
        names = {normalized(name) for name in distributions.get(module, [])}
        if not names:
            missing.append(f"{module} (imported by {where}) is installed by no package")
        elif not names & pinned:
            missing.append(f"{module} (imported by {where}): {', '.join(sorted(names))}")
    return missing


def test_every_package_the_broker_imports_is_pinned_in_requirements_in():
    pinned = set(requirement_names(ROOT / "requirements.in"))
    assert unpinned_imports(RUNTIME_CODE, pinned) == []


def test_every_package_the_tests_and_tools_import_is_pinned():
    pinned = set(requirement_names(ROOT / "requirements.in"))
    pinned |= set(requirement_names(ROOT / "requirements-dev.in"))
    assert unpinned_imports(DEV_CODE, pinned) == []


@pytest.mark.parametrize("lock", ["requirements.txt", "requirements-dev.txt"])
def test_every_package_in_a_lock_is_pinned_with_hashes(lock):
    text = (ROOT / lock).read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])  # after uv's header
    assert len(entries) > 30
    for entry in entries:
        assert re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[^\]]*\])?==\S+", entry), entry
        assert "--hash=sha256:" in entry, f"{lock}: {entry.splitlines()[0]} has no hash"
    assert not re.search(r"^\s*-e\s", text, re.MULTILINE), f"{lock} installs an editable"


@pytest.mark.parametrize(
    ("source", "lock"),
    [("requirements.in", "requirements.txt"), ("requirements-dev.in", "requirements-dev.txt")],
)
def test_a_lock_pins_what_its_source_pins(source, lock):
    """An edit of a .in file without `make lock` would install the old versions."""
    locked = requirement_names(ROOT / lock)
    wanted = requirement_names(ROOT / source)
    assert {name: locked.get(name) for name in wanted} == wanted


def test_the_runtime_lock_holds_the_runtime_only():
    """What production installs is what requirements.in needs: the packages it names and
    theirs, as installed here (markers for other platforms aside), and nothing for tests."""
    runtime = requirement_names(ROOT / "requirements.txt")
    dev_only = set(requirement_names(ROOT / "requirements-dev.in")) - set(
        requirement_names(ROOT / "requirements.in")
    )
    assert dev_only and not dev_only & set(runtime)
    needed: set[str] = set()
    todo = list(requirement_names(ROOT / "requirements.in"))
    todo += ["psycopg-binary"]  # psycopg[binary]'s extra
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        for requirement in importlib.metadata.requires(name) or []:
            dependency, _, marker = requirement.partition(";")
            if marker and not Marker(marker.strip()).evaluate({"extra": ""}):
                continue  # another platform's, or an extra's
            todo.append(normalized(re.split(r"[\s<>=!~\[(]", dependency.strip(), 1)[0]))
    platform_only = {name for name in runtime if name not in needed}
    assert platform_only <= {"async-timeout", "tzdata", "colorama"}, platform_only
    assert needed <= set(runtime), needed - set(runtime)
