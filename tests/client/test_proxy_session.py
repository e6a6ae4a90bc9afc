"""The client package's proxy session against the live broker and the sandbox over real
HTTP: relative URLs through /api/v1/proxy, no provider token in the service, the broker's
refusals as typed errors, the provider's answers as they are."""

from __future__ import annotations

import pytest
from broker_client import Forbidden, InsufficientScope, NotFound

from tests.client.conftest import add_rule, count, expire_at_provider
from tests.sandbox_grants import refresh_count

pytestmark = pytest.mark.sandbox

CLOUD_ID = "6f1c2a0e-5b7d-4c1e-9a4f-0d3e8b7a1c01"  # the sandbox's first site
JIRA = f"ex/jira/{CLOUD_ID}/rest/api/3"


def test_a_service_calls_the_provider_in_three_lines(broker, grant, sandbox):
    sandbox.reset_counters()
    with broker.proxy_session(user="alice", provider="sandbox") as jira:
        me = jira.get(f"{JIRA}/myself")
        found = jira.post(f"/{JIRA}/search", json={"jql": "project = ACME"})

    assert me.status_code == 200 and me.json()["accountId"] == "sandbox-alice"
    assert found.status_code == 200 and found.json()["jql"] == "project = ACME"
    assert grant.unseal("access_token") not in me.text + found.text
    requests_seen = sandbox.counters()["requests"]
    assert requests_seen[f"GET /{JIRA}/myself"] == 1
    assert requests_seen[f"POST /{JIRA}/search"] == 1


def test_an_expired_token_is_the_brokers_business(broker, service, grant, sandbox):
    expire_at_provider(sandbox, grant.unseal("access_token"))
    sandbox.reset_counters()
    jira = broker.proxy_session(grant=str(grant.pk), provider="sandbox")

    assert jira.get(f"{JIRA}/myself").status_code == 200
    assert refresh_count(sandbox) == 1
    assert count("proxy.called", service["client_id"]) == 1


def test_an_oauth1_grant_is_signed_by_the_broker(broker, jira_grant):
    jira = broker.proxy_session(user="alice", provider="sandbox-jira")
    myself = jira.get("rest/api/2/myself")
    assert myself.status_code == 200 and myself.json()["name"] == "alice"


def test_the_brokers_refusals_raise_and_the_providers_answers_do_not(
    broker, service, grant, sandbox
):
    jira = broker.proxy_session(user="alice", provider="sandbox")
    with pytest.raises(InsufficientScope) as missing_scope:
        jira.post(f"{JIRA}/issue", json={"fields": {}})
    assert missing_scope.value.error == "insufficient_scope"
    with pytest.raises(NotFound):
        broker.proxy_session(user="bob", provider="sandbox").get(f"{JIRA}/myself")
    unknown_site = jira.get("ex/jira/no-such-site/rest/api/3/myself")
    assert unknown_site.status_code == 404  # the provider's 404, not the broker's

    add_rule(service["client_id"], "sandbox", "--proxy-methods", "GET")
    sandbox.reset_counters()
    with pytest.raises(Forbidden) as denied:
        jira.post(f"{JIRA}/search", json={"jql": "x"})
    assert denied.value.error == "access_denied"
    assert sandbox.counters()["requests"] == {}


def test_absolute_urls_are_refused_before_anything_is_sent(broker, service, sandbox):
    jira = broker.proxy_session(user="alice", provider="sandbox")
    for url in (f"{sandbox.url}/me", "//evil.example/me", "https://evil.example/me"):
        with pytest.raises(ValueError):
            jira.get(url)
    with pytest.raises(ValueError):
        broker.proxy_session(user="alice", grant="x", provider="sandbox")
    assert count("service.authenticated", service["client_id"]) == 0
