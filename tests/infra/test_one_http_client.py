"""Every outbound HTTP call goes through broker.infra.outbound_http (its deadline, its SSRF
guard): no other module of the broker or of accounts calls `requests` itself. Importing it
for its exception classes and types is fine."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
THE_CLIENT = Path("broker/infra/outbound_http.py")


def calls_to_requests(path: Path) -> list[str]:
    """`requests.get(...)`, `requests.Session()`, and names imported from requests called
    the same way (`from requests import Session; Session()`)."""
    tree = ast.parse(path.read_text())
    imported = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "requests"
        for alias in node.names
    }
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        while isinstance(func, ast.Attribute):
            func = func.value  # requests.sessions.Session() -> requests
        if isinstance(func, ast.Name) and (func.id == "requests" or func.id in imported):
            if not ast.unparse(node.func).endswith(("Error", "Exception", "Timeout")):
                found.append(f"{path.name}:{node.lineno}: {ast.unparse(node.func)}")
    return found


def test_no_module_but_the_http_client_calls_requests():
    modules = [
        path
        for package in ("broker", "accounts")
        for path in sorted((ROOT / package).rglob("*.py"))
        if "migrations" not in path.parts and path.relative_to(ROOT) != THE_CLIENT
    ]
    assert len(modules) > 50
    assert [call for path in modules for call in calls_to_requests(path)] == []


def test_the_check_finds_a_direct_call(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import requests\nfrom requests import Session\n"
        "requests.get('http://x')\nSession()\nraise requests.ConnectionError()\n"
    )
    assert calls_to_requests(sample) == ["sample.py:3: requests.get", "sample.py:4: Session"]
