"""Every endpoint against every way a service can be refused, and the one way it is not.

Each refusal is checked for what did not happen (no token, header or link came back, no
grant listed) and for the audit event it left.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from broker.models import AccessRule, ConnectLink, Grant
from broker.service_identity import tokens
from tests.api.conftest import audit_events, fetch_token
from tests.factories import consented_grant, service_and_secret

pytestmark = pytest.mark.django_db

SCENARIOS = [
    "no_rule",
    "rule_for_another_provider",
    "scope_outside_rule",
    "user_outside_group",
    "disabled_service",
    "expired_broker_token",
    "user_deactivated",
    # Rules only for a signed-in user: a request that merely names her gets no token or
    # signature (token exchange or Broker-Subject-Token is needed: test_on_behalf_of.py).
    "on_behalf_of_only",
    # Rules for the proxy only: no raw token or signature, calls through the proxy.
    "proxy_only",
    "allowed",
]
ENDPOINTS = ["access-token", "sign", "connect-links", "grants", "proxy"]

EXPECTED = {
    "access-token": [404, 404, 403, 404, 401, 401, 404, 403, 403, 200],
    "sign": [404, 404, 403, 404, 401, 401, 404, 403, 403, 200],
    "connect-links": [404, 404, 403, 404, 401, 401, 404, 201, 201, 201],
    "grants": [200, 200, None, 200, 401, 401, 200, 200, 200, 200],
    # "scope_outside_rule" for the proxy: a method its rule does not allow.
    "proxy": [404, 404, 403, 404, 401, 401, 404, 403, 200, 200],
}
DENIED_ACTION = {"connect-links": "connect_link.denied", "proxy": "proxy.denied"}
REASONS = {"on_behalf_of_only": "on_behalf_of_required", "proxy_only": "proxy_only"}
SECRETS_IN_SUCCESS = {
    "access-token": "access_token",
    "sign": "authorization",
    "connect-links": "url",
}


def _rules(scenario, service, atlassian, jira_dc, other_app, group) -> None:
    if scenario == "no_rule":
        return
    if scenario == "rule_for_another_provider":
        AccessRule.objects.create(
            service=service,
            provider_app=other_app,
            can_sign=True,
            can_create_connect_links=True,
        )
        return
    restricted = scenario == "scope_outside_rule"
    users_group = group if scenario == "user_outside_group" else None
    on_behalf_of = scenario == "on_behalf_of_only"
    proxy_only = scenario == "proxy_only"
    AccessRule.objects.create(
        service=service,
        provider_app=atlassian,
        scopes=["read:me", "read:jira-work"],
        users_group=users_group,
        can_create_connect_links=True,
        on_behalf_of=on_behalf_of,
        proxy_only=proxy_only,
        proxy_methods=["GET"] if restricted else [],
    )
    AccessRule.objects.create(
        service=service,
        provider_app=jira_dc,
        users_group=users_group,
        can_sign=not restricted,
        on_behalf_of=on_behalf_of,
        proxy_only=proxy_only,
    )


def _call(api, endpoint, scenario, headers, grants) -> Any:
    wide = scenario == "scope_outside_rule"
    if endpoint == "access-token":
        body: dict[str, Any] = {"user": "alice", "provider": "atlassian"}
        body["scopes"] = ["read:me", "write:jira-work"] if wide else ["read:me"]
        return api.post("/api/v1/access-token", body, content_type="application/json", **headers)
    if endpoint == "sign":
        body = {
            "grant": str(grants["jira"].pk),
            "method": "GET",
            "url": "https://jira.acme.example/rest/api/2/myself",
        }
        return api.post("/api/v1/sign", body, content_type="application/json", **headers)
    if endpoint == "connect-links":
        body = {"user": "alice", "provider": "atlassian", "return_to": "http://localhost:8000/x"}
        if wide:
            body["scopes"] = ["write:jira-work"]
        return api.post("/api/v1/connect-links", body, content_type="application/json", **headers)
    if endpoint == "proxy":
        path = "/api/v1/proxy/atlassian/rest/api/3/myself"
        if wide:
            return api.post(
                path, b"{}", content_type="application/json", HTTP_BROKER_USER="alice", **headers
            )
        return api.get(path, HTTP_BROKER_USER="alice", **headers)
    return api.get("/api/v1/grants", {"user": "alice"}, **headers)


CASES = [
    (scenario, endpoint)
    for scenario in SCENARIOS
    for endpoint in ENDPOINTS
    if EXPECTED[endpoint][SCENARIOS.index(scenario)] is not None  # listing takes no scopes
]


@pytest.mark.parametrize(("scenario", "endpoint"), CASES)
def test_authorization_matrix(
    api, endpoint, scenario, owner, atlassian, jira_dc, other_app, group, settings, local_server
):
    expected = EXPECTED[endpoint][SCENARIOS.index(scenario)]
    # The proxy forwards to a local server standing for Atlassian's API origin.
    atlassian.endpoints = {"api": local_server.url}
    atlassian.save()
    local_server.documents["/rest/api/3/myself"] = b'{"accountId": "alice"}'
    grants = {
        "atlassian": consented_grant(owner, atlassian, scopes=["read:me", "read:jira-work"]),
        "jira": consented_grant(owner, jira_dc),
    }
    service, secret = service_and_secret()
    _rules(scenario, service, atlassian, jira_dc, other_app, group)
    if scenario == "expired_broker_token":
        token, _ = tokens.issue(service, tokens.API_SCOPES, not_after=time.time() - 1)
    else:
        token = fetch_token(api, service, secret)["access_token"]
    if scenario == "disabled_service":
        tokens.disable_service(service)
    if scenario == "user_deactivated":
        # As for a revoked grant: nothing served, nothing listed, the grants kept.
        owner.is_active = False
        owner.save(update_fields=["is_active"])
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    if endpoint in ("sign", "connect-links") and scenario in ("no_rule", "user_outside_group"):
        # Without the capability the broker token lacks the API scope: ask with a token
        # minted as if it had it, to reach the rule check itself.
        token, _ = tokens.issue(service, tokens.API_SCOPES)
        headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"}

    response = _call(api, endpoint, scenario, headers, grants)

    assert response.status_code == expected, getattr(response, "content", b"")
    if endpoint == "proxy" and expected == 200:
        assert b"".join(response.streaming_content) == b'{"accountId": "alice"}'
        assert len(local_server.requests) == 1
        return
    body = response.json()
    if endpoint == "grants":
        listed = [g["id"] for g in body.get("grants", [])]
        if scenario in ("allowed", "on_behalf_of_only", "proxy_only"):  # listed, no token
            assert sorted(listed) == sorted(str(g.pk) for g in grants.values())
            assert "access_token" not in response.content.decode()
        else:
            assert listed == []
        if expected == 401:
            assert audit_events(action="service.auth_failed", outcome="denied")
        return
    if endpoint == "proxy":
        assert local_server.requests == []  # nothing forwarded
        assert response["Broker-Error"] == body["error"]
    secret_field = SECRETS_IN_SUCCESS.get(endpoint, "")
    if expected in (200, 201):
        assert body[secret_field]
        return
    assert set(body) == {"error", "error_description"}
    assert response["Cache-Control"] == "no-store"
    if endpoint == "connect-links":
        assert not ConnectLink.objects.exists()
    if expected == 401:
        assert audit_events(action="service.auth_failed", outcome="denied")
    else:
        denied_action = DENIED_ACTION.get(endpoint, "token.denied")
        [event] = audit_events(action=denied_action, service=service.client_id)
        assert event.outcome == "denied" and event.detail["status"] == expected
        if scenario in REASONS:
            assert event.detail["reason"] == REASONS[scenario]
    assert not audit_events(action__in=["token.issued", "request.signed", "proxy.called"])
    assert Grant.objects.filter(status="active").count() == len(grants)  # kept, untouched


def test_an_invisible_grant_looks_exactly_like_a_missing_one(api, owner, atlassian, other_app):
    visible_to_nobody = consented_grant(owner, other_app)
    service, secret = service_and_secret()
    AccessRule.objects.create(service=service, provider_app=atlassian)
    headers = {"HTTP_AUTHORIZATION": f"Bearer {fetch_token(api, service, secret)['access_token']}"}
    hidden = api.post(
        "/api/v1/access-token",
        {"grant": str(visible_to_nobody.pk)},
        content_type="application/json",
        **headers,
    )
    missing = api.post(
        "/api/v1/access-token",
        {"grant": "00000000-0000-4000-8000-000000000000"},
        content_type="application/json",
        **headers,
    )
    unknown_user = api.post(
        "/api/v1/access-token",
        {"user": "nobody", "provider": "gitlab"},
        content_type="application/json",
        **headers,
    )
    assert hidden.status_code == missing.status_code == unknown_user.status_code == 404
    assert hidden.content == missing.content == unknown_user.content
    # Each answer names its own request; nothing else tells them apart.
    assert {k: v for k, v in hidden.headers.items() if k != "X-Request-ID"} == {
        k: v for k, v in missing.headers.items() if k != "X-Request-ID"
    }


def test_a_group_rule_covers_members_only(api, owner, outsider, atlassian, group):
    owner.groups.add(group)
    mine, theirs = consented_grant(owner, atlassian), consented_grant(outsider, atlassian)
    service, secret = service_and_secret()
    AccessRule.objects.create(service=service, provider_app=atlassian, users_group=group)
    headers = {"HTTP_AUTHORIZATION": f"Bearer {fetch_token(api, service, secret)['access_token']}"}
    listed = api.get("/api/v1/grants", **headers).json()["grants"]
    assert [g["id"] for g in listed] == [str(mine.pk)]
    for grant, status in ((mine, 200), (theirs, 404)):
        response = api.post(
            "/api/v1/access-token",
            {"grant": str(grant.pk)},
            content_type="application/json",
            **headers,
        )
        assert response.status_code == status
