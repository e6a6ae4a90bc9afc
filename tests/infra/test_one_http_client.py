"""Every outbound HTTP call goes through broker.infra.outbound_http (its deadline, its SSRF
guard): no other module of the broker or of accounts sends with `requests` itself or makes
its own session. Importing it for its exceptions, types and auth helpers (`HTTPBasicAuth`)
is fine: they send nothing."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
THE_CLIENT = Path("broker/infra/outbound_http.py")


# What sends a request, or makes a session to send one with, in requests' API.
SENDING = {"get", "post", "put", "patch", "delete", "head", "options", "request", "Session"}


def calls_to_requests(path: Path) -> list[str]:
    """`requests.get(...)`, `requests.Session()`, and the same names imported from requests
    (`from requests import Session; Session()`)."""
    tree = ast.parse(path.read_text())
    imported = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "requests"
        for alias in node.names
        if alias.name in SENDING
    }
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in imported:
            found.append(f"{path.name}:{node.lineno}: {func.id}")
        elif isinstance(func, ast.Attribute) and func.attr in SENDING:
            root = func.value
            while isinstance(root, ast.Attribute):
                root = root.value  # requests.sessions.Session() -> requests
            if isinstance(root, ast.Name) and root.id == "requests":
                found.append(f"{path.name}:{node.lineno}: {ast.unparse(func)}")
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
        "import requests\nfrom requests import Session\nfrom requests.auth import HTTPBasicAuth\n"
        "requests.get('http://x')\nSession()\nrequests.sessions.Session()\n"
        "HTTPBasicAuth('a', 'b')\nraise requests.ConnectionError()\n"
    )
    assert sorted(calls_to_requests(sample)) == [
        "sample.py:4: requests.get",
        "sample.py:5: Session",
        "sample.py:6: requests.sessions.Session",
    ]
