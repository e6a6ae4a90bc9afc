"""Grants holding an Atlassian API token are never handed out: /access-token, /sign and token
exchange all refuse them with 400 `api_token_grant`, serve nothing and record the refusal."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import ExternalIdentity
from broker.models import AccessRule, Grant, ProviderApp
from tests.api.conftest import audit_events
from tests.api.test_on_behalf_of import exchange
from tests.factories import service_and_secret
from tests.subject_idp import AUDIENCE

pytestmark = pytest.mark.django_db

API_TOKEN = "ATATT-the-secret-api-token-0123456789"


@pytest.fixture
def site(db) -> ProviderApp:
    return ProviderApp.objects.create(
        slug="acme-site",
        kind="atlassian-api-token",
        name="Acme (API token)",
        base_url="https://acme.atlassian.net",
    )


@pytest.fixture
def token_grant(owner, site) -> Grant:
    grant = Grant(
        user=owner,
        provider_app=site,
        external_account_id="acct-alice",
        account_name="Alice",
        account_email="alice@example.com",
        refresh_absolute_expires_at=timezone.now() + timedelta(days=90),
    )
    grant.seal("api_token", API_TOKEN)
    grant.save()
    return grant


@pytest.fixture
def service(site):
    service, secret = service_and_secret("scripts")
    service.subject_audiences = [AUDIENCE]
    service.save()
    AccessRule.objects.create(service=service, provider_app=site, can_sign=True)
    return service, secret


@pytest.fixture
def headers(api, service):
    from tests.api.conftest import fetch_token

    token = fetch_token(api, *service)["access_token"]
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


def assert_refused_and_nothing_served(response, grant: Grant) -> None:
    assert response.status_code == 400, response.content
    assert response.json()["error"] == "api_token_grant"
    assert "proxy" in response.json()["error_description"]
    assert API_TOKEN not in response.content.decode()
    grant.refresh_from_db()
    assert grant.last_used_at is None
    served = ("token.issued", "request.signed", "token.exchanged")
    assert not [e for e in audit_events() if e.action in served]
    assert all(API_TOKEN not in json.dumps(e.detail) for e in audit_events())


@pytest.mark.parametrize("named_by", ["grant", "user"])
def test_access_token_never_returns_an_api_token(api, headers, token_grant, named_by):
    body = (
        {"grant": str(token_grant.pk)}
        if named_by == "grant"
        else {"user": "alice", "provider": "acme-site"}
    )
    response = api.post("/api/v1/access-token", body, content_type="application/json", **headers)
    assert_refused_and_nothing_served(response, token_grant)
    [denied] = audit_events(action="token.denied")
    assert denied.grant_id == token_grant.pk and denied.detail["reason"] == "api_token_grant"


def test_force_refresh_does_not_reach_the_refresh_engine_either(api, headers, token_grant):
    body = {"grant": str(token_grant.pk), "force_refresh": True}
    response = api.post("/api/v1/access-token", body, content_type="application/json", **headers)
    assert_refused_and_nothing_served(response, token_grant)
    assert not audit_events(action="grant.refreshed")


def test_sign_never_signs_with_an_api_token(api, headers, token_grant):
    body = {
        "grant": str(token_grant.pk),
        "method": "GET",
        "url": "https://acme.atlassian.net/rest/api/3/myself",
    }
    response = api.post("/api/v1/sign", body, content_type="application/json", **headers)
    assert_refused_and_nothing_served(response, token_grant)


def test_token_exchange_never_returns_an_api_token(api, idp, owner, service, token_grant):  # noqa: F811
    ExternalIdentity.objects.create(user=owner, issuer=idp.issuer, subject="alice-sub")
    response = exchange(api, service, idp.token("alice-sub"), audience="acme-site")
    assert_refused_and_nothing_served(response, token_grant)
    [denied] = audit_events(action="token.exchange_denied")
    assert denied.detail["reason"] == "api_token_grant"


def test_the_grant_list_shows_the_grant_and_its_expiry_but_no_token(api, headers, token_grant):
    response = api.get("/api/v1/grants?provider=acme-site", **headers)
    assert response.status_code == 200
    [listed] = response.json()["grants"]
    assert listed["id"] == str(token_grant.pk) and listed["status"] == "active"
    assert API_TOKEN not in response.content.decode()
