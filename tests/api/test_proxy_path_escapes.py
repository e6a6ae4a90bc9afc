"""Proxy path rules cannot be escaped through what a Java servlet container (Tomcat: Jira and
Confluence Data Center), Jetty or nginx would normalise differently from the rule matcher:
`;` path parameters (`..;` is `..` to Tomcat), dot segments in any encoding, encoded
separators, control characters. Each request goes to the live broker over HTTP, sent
exactly as written, against the sandbox provider, whose request counter proves that
nothing was forwarded."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from broker.models import Grant
from tests.api import test_proxy_sandbox
from tests.api.conftest import audit_events
from tests.api.test_proxy_sandbox import Service, raw_get
from tests.sandbox_server import SandboxServer

pytestmark = [pytest.mark.sandbox]

JIRA = "sandbox-jira"
# The sandbox and its Jira Data Center grant, as test_proxy_sandbox.py starts them.
provider = test_proxy_sandbox.provider
apps = test_proxy_sandbox.apps
jira_grant = test_proxy_sandbox.jira_grant


def forwarded(provider: SandboxServer) -> dict[str, int]:
    """Every request the sandbox received since the last reset (the API, not OAuth)."""
    return {
        name: count
        for name, count in provider.counters()["requests"].items()
        if "/oauth" not in name and "/plugins/servlet/oauth" not in name
    }


@pytest.fixture
def allowed_only(provider, apps, jira_grant: Grant, live_server) -> Iterator[Service]:
    """A service whose one rule lets it reach `/allowed/**` and `/rest/api/2/issue/*`."""
    service = Service(
        live_server.url, proxy_paths=["/allowed/**", "/rest/api/2/issue/*", "/rest/api/2/echo"]
    )
    provider.reset_counters()
    yield service
    service.http.close()


ESCAPES = [
    # The reproductions of issue 25, item 2.
    "allowed/..;/..;/secret/admin",
    "rest/api/2/issue/..;",
    "rest/api/2/issue/..%3B",
    "rest/api/2/issue/..%3b",
    "allowed/..%3B/..%3B/secret/admin",
    # Path parameters anywhere (Tomcat strips them before mapping the servlet).
    "allowed/x;jsessionid=1/../../secret",
    "allowed/.;/secret",
    "rest/api/2/issue/ACME-1;x=y",
    "allowed/%3B/secret",
    # Dot segments in every encoding.
    "allowed/../secret",
    "allowed/%2e%2e/secret",
    "allowed/%2E%2E/secret",
    "allowed/.%2e/secret",
    "allowed/%2e./secret",
    "allowed/%2e/secret",
    "allowed/.../secret",
    "allowed/%252e%252e/secret",
    "allowed/%25252e%25252e/secret",
    "allowed/%c0%ae%c0%ae/secret",  # overlong UTF-8 '.'
    "allowed/%u002e%u002e/secret",  # IIS/old Jetty %u escapes
    "allowed/%EF%BC%8E%EF%BC%8E/secret",  # fullwidth '．．' (NFKC: '..')
    # Encoded and look-alike separators.
    "allowed/..%2Fsecret",
    "allowed/..%2fsecret",
    "allowed/..%5Csecret",
    "allowed/..\\secret",
    "allowed/%EF%BC%8F..",  # fullwidth solidus
    # NUL and control characters, Unicode format and separator characters.
    "allowed/..%00/secret",
    "allowed/x%00.json",
    "allowed/%0d%0aX-Injected:%201",
    "allowed/x%09",
    "allowed/x%C2%85",  # NEL
    "allowed/x%E2%80%AE",  # right-to-left override
    "allowed/x%E2%80%8B",  # zero-width space
]


@pytest.mark.parametrize("path", ESCAPES)
def test_a_segment_a_servlet_container_would_read_otherwise_is_refused_unsent(
    provider, allowed_only, path
):
    status, headers, body = raw_get(
        allowed_only.broker_url, f"/api/v1/proxy/{JIRA}/{path}", allowed_only.headers
    )

    assert status == 400, body
    assert headers["Broker-Error"] == "invalid_path" and b'"invalid_path"' in body
    assert forwarded(provider) == {}
    [event] = audit_events(action="proxy.denied")
    assert event.detail["reason"] == "invalid_path"


def test_the_rules_still_forward_what_they_allow(provider, allowed_only):
    for path in ("rest/api/2/issue/ACME-1", "rest/api/2/echo"):
        status, _, body = raw_get(
            allowed_only.broker_url, f"/api/v1/proxy/{JIRA}/{path}", allowed_only.headers
        )
        assert status != 400 and b"invalid_path" not in body, body
    assert set(forwarded(provider)) == {"GET /rest/api/2/issue/ACME-1", "GET /rest/api/2/echo"}
