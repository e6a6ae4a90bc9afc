"""POST /api/v1/sign: OAuth 1.0a headers for exactly one request, on the provider only."""

from __future__ import annotations

import pytest

from broker.models import AccessRule, Grant
from broker.service_identity import tokens
from tests.api.conftest import audit_events, fetch_token, token_issues
from tests.factories import consented_grant, service_and_secret

pytestmark = pytest.mark.django_db
MYSELF = "https://jira.acme.example/rest/api/2/myself"


@pytest.fixture
def signer(api, owner, jira_dc, atlassian):
    service, secret = service_and_secret("jira-bot")
    AccessRule.objects.create(service=service, provider_app=jira_dc, can_sign=True)
    AccessRule.objects.create(service=service, provider_app=atlassian, can_sign=True)
    headers = {"HTTP_AUTHORIZATION": f"Bearer {fetch_token(api, service, secret)['access_token']}"}
    return service, headers, consented_grant(owner, jira_dc, access_expires_at=None)


def sign(api, headers, **body):
    return api.post("/api/v1/sign", body, content_type="application/json", **headers)


def test_an_oauth2_grant_is_sent_to_access_token(api, signer, owner, atlassian):
    _, headers, _ = signer
    oauth2 = consented_grant(owner, atlassian)
    response = sign(api, headers, grant=str(oauth2.pk), method="GET", url=MYSELF)
    assert response.status_code == 400 and "access-token" in response.json()["error_description"]


def test_signing_needs_a_rule_with_sign(api, owner, jira_dc):
    service, _ = service_and_secret("reader")
    AccessRule.objects.create(service=service, provider_app=jira_dc, can_sign=False)
    grant = consented_grant(owner, jira_dc, access_expires_at=None)
    token, _ = tokens.issue(service, tokens.API_SCOPES)  # as if another rule allowed signing
    response = sign(
        api,
        {"HTTP_AUTHORIZATION": f"Bearer {token}"},
        grant=str(grant.pk),
        method="GET",
        url=MYSELF,
    )
    assert response.status_code == 403 and "authorization" not in response.json()
    [event] = audit_events(action="token.denied")
    assert event.grant_id == grant.pk and event.detail["reason"] == "access_denied"


def test_a_dead_oauth1_grant_is_409(api, signer):
    _, headers, grant = signer
    Grant.objects.filter(pk=grant.pk).update(status="reconnect_required")
    response = sign(api, headers, grant=str(grant.pk), method="GET", url=MYSELF)
    assert response.status_code == 409 and response.json()["error"] == "reconnect_required"


def test_it_signs_exactly_the_request_and_audits_without_the_query(api, signer):
    service, headers, grant = signer
    response = sign(api, headers, grant=str(grant.pk), method="get", url=MYSELF + "?secret=x")
    assert response.status_code == 200, response.content
    assert response.json()["authorization"].startswith("OAuth ")
    assert grant.unseal("token_secret") not in response.content.decode()
    [event] = audit_events(action="request.signed")
    assert event.service == service.client_id and event.grant_id == grant.pk
    assert event.detail == {
        "method": "GET",
        "path": MYSELF,
        "request_id": event.detail["request_id"],
    }
    assert token_issues(service, "signed") == 1


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("GET", "https://evil.example/rest/api/2/myself"),
        ("GET", "https://jira.acme.example@evil.example/"),
        ("GET", "ftp://jira.acme.example/x"),
        ("G T", MYSELF),
    ],
)
def test_it_signs_nothing_for_another_host_or_a_bad_method(api, signer, method, url):
    _, headers, grant = signer
    response = sign(api, headers, grant=str(grant.pk), method=method, url=url)
    assert response.status_code == 400 and "authorization" not in response.json()
    assert not audit_events(action="request.signed")
    assert audit_events(action="token.denied")


def test_signing_ignores_scopes_oauth1_tokens_do_not_have(api, owner, jira_dc):
    """The scope promise is about OAuth 2.0 tokens: an OAuth 1.0a grant's scopes (a label at
    most) never block a signature, whatever the signing rule's scopes."""
    service, secret = service_and_secret("jira-reader")
    AccessRule.objects.create(service=service, provider_app=jira_dc, scopes=["READ"], can_sign=True)
    grant = consented_grant(owner, jira_dc, access_expires_at=None, scopes=["READ", "WRITE"])
    headers = {"HTTP_AUTHORIZATION": f"Bearer {fetch_token(api, service, secret)['access_token']}"}
    response = sign(api, headers, grant=str(grant.pk), method="GET", url=MYSELF)
    assert response.status_code == 200, response.content
    assert response.json()["authorization"].startswith("OAuth ")
