"""Provider calls take their proxies from the environment as requests would (HTTP_PROXY,
NO_PROXY), but read it once per origin and process, not on every call."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from broker.infra import outbound_http
from broker.infra.outbound_http import environment_proxies, provider_session
from tests.local_http import LocalServer, start_local_server

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture
def environment(monkeypatch) -> Iterator[pytest.MonkeyPatch]:
    """No proxy variable but those a test sets, and nothing read before it."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    outbound_http._environment_proxies.cache_clear()
    yield monkeypatch
    outbound_http._environment_proxies.cache_clear()


@pytest.fixture
def local() -> Iterator[LocalServer]:
    server = start_local_server()
    yield server
    server.stop()


def test_a_provider_call_goes_through_the_proxy_the_environment_names(environment, local):
    environment.setenv("HTTP_PROXY", local.url)
    with provider_session() as session:
        session.post("http://provider.invalid/oauth/token", data={"grant_type": "x"})
    (received,) = local.requests
    assert received.path == "http://provider.invalid/oauth/token"  # a proxy's request line


def test_hosts_in_no_proxy_are_called_directly(environment, local):
    environment.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    environment.setenv("NO_PROXY", "localhost,127.0.0.1")
    with provider_session() as session:
        answer = session.post(f"{local.url}/oauth/token", data={"grant_type": "x"})
    assert answer.status_code == 200
    assert local.requests[0].path == "/oauth/token"
    assert environment_proxies("http://provider.invalid/") == {
        "http": "http://127.0.0.1:9",
        "no": "localhost,127.0.0.1",
    }


def test_the_environment_is_read_once_per_origin(environment, local, monkeypatch):
    reads = []

    def counted() -> dict[str, str]:
        reads.append(1)
        return {}

    # requests reads the proxy variables with these two (urllib's), on every call it sends
    # with a session that trusts the environment.
    monkeypatch.setattr(requests.utils, "getproxies", counted)
    monkeypatch.setattr(requests.utils, "proxy_bypass", lambda host: reads.append(1) or False)
    for _ in range(3):
        with provider_session() as session:
            session.post(f"{local.url}/oauth/token", data={"grant_type": "x"})
    assert len(local.requests) == 3
    assert len(reads) <= 2  # the first call's reading only
