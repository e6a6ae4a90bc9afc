"""POST /api/v1/oauth/token with client secrets (RFC 6749 2.3.1, 4.4, 5.1, 5.2)."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from broker.models import ServiceClient
from broker.service_identity import service_secrets, tokens
from tests.api.conftest import (
    TOKEN_URL,
    audit_events,
    basic,
    fetch_token,
    post_form,
)
from tests.factories import service_and_secret

pytestmark = pytest.mark.django_db


def test_it_issues_a_broker_token_with_client_secret_basic(api):
    service, secret = service_and_secret()
    response = post_form(
        api,
        {"grant_type": "client_credentials"},
        HTTP_AUTHORIZATION=basic(service.client_id, secret),
    )
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    assert body["token_type"] == "Bearer"
    assert 295 <= body["expires_in"] <= 300
    assert body["scope"] == "grants:read tokens:read"
    parsed = tokens.parse(body["access_token"])
    assert parsed.service_id == service.pk and parsed.client_id == service.client_id
    [event] = audit_events(action="service.authenticated", service=service.client_id)
    assert event.outcome == "success" and event.detail["method"] == "client_secret_basic"
    assert secret not in str(event.detail) and body["access_token"] not in str(event.detail)


def test_it_issues_a_broker_token_with_client_secret_post(api):
    service, secret = service_and_secret()
    body = post_form(
        api,
        {
            "grant_type": "client_credentials",
            "client_id": service.client_id,
            "client_secret": secret,
        },
    ).json()
    assert tokens.parse(body["access_token"]).client_id == service.client_id


def test_it_stores_only_a_keyed_digest_of_the_secret(api):
    service, secret = service_and_secret()
    service.refresh_from_db()
    assert secret.startswith("bks_") and len(secret) >= 40
    assert secret not in (service.secret_digest, service.previous_secret_digest)
    assert service.secret_last4 == secret[-4:]
    assert service_secrets.matched_secret(service, secret) is not None
    assert service_secrets.matched_secret(service, secret[:-1] + "x") is None


@pytest.mark.parametrize(
    "form_or_header",
    ["wrong secret", "unknown client", "no authentication", "disabled"],
)
def test_it_refuses_bad_client_credentials_with_invalid_client(api, form_or_header):
    service, secret = service_and_secret()
    headers = {}
    form = {"grant_type": "client_credentials"}
    if form_or_header == "wrong secret":
        headers["HTTP_AUTHORIZATION"] = basic(service.client_id, secret[:-2] + "zz")
    elif form_or_header == "unknown client":
        headers["HTTP_AUTHORIZATION"] = basic("nobody", secret)
    elif form_or_header == "disabled":
        tokens.disable_service(service)
        headers["HTTP_AUTHORIZATION"] = basic(service.client_id, secret)
    response = post_form(api, form, **headers)
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert response["WWW-Authenticate"].startswith("Basic")
    assert response["Cache-Control"] == "no-store"
    assert "access_token" not in response.json()
    failures = audit_events(action="service.auth_failed")
    assert len(failures) == 1 and failures[0].outcome == "denied"
    assert secret not in str(failures[0].detail)


@pytest.mark.parametrize(
    ("form", "error"),
    [
        ({}, "invalid_request"),
        ({"grant_type": "password"}, "unsupported_grant_type"),
        ({"grant_type": "client_credentials", "scope": "admin"}, "invalid_scope"),
        ({"grant_type": "client_credentials", "scope": "requests:sign"}, "invalid_scope"),
    ],
)
def test_it_answers_rfc6749_errors(api, form, error):
    service, secret = service_and_secret()
    response = post_form(api, form, HTTP_AUTHORIZATION=basic(service.client_id, secret))
    assert response.status_code == 400
    assert response.json()["error"] == error
    assert "access_token" not in response.json()
    assert audit_events(action="service.auth_failed", outcome="denied")


def test_it_refuses_two_authentication_methods_at_once(api):
    service, secret = service_and_secret()
    response = post_form(
        api,
        {
            "grant_type": "client_credentials",
            "client_id": service.client_id,
            "client_secret": secret,
        },
        HTTP_AUTHORIZATION=basic(service.client_id, secret),
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"


def test_it_refuses_repeated_parameters_and_json_bodies(api):
    service, secret = service_and_secret()
    auth = basic(service.client_id, secret)
    repeated = api.post(
        TOKEN_URL,
        "grant_type=client_credentials&grant_type=client_credentials",
        content_type="application/x-www-form-urlencoded",
        HTTP_AUTHORIZATION=auth,
    )
    as_json = api.post(
        TOKEN_URL,
        {"grant_type": "client_credentials"},
        content_type="application/json",
        HTTP_AUTHORIZATION=auth,
    )
    assert repeated.status_code == as_json.status_code == 400
    assert api.get(TOKEN_URL).status_code == 405


def test_it_narrows_api_scopes_on_request(api):
    service, secret = service_and_secret()
    body = fetch_token(api, service, secret, scope="tokens:read")
    assert body["scope"] == "tokens:read"
    assert tokens.parse(body["access_token"]).scopes == ("tokens:read",)


def test_a_rotated_secret_keeps_working_for_its_grace_period_only(api):
    service, old = service_and_secret()
    new = service_secrets.rotate_secret(service, timedelta(minutes=10))
    assert new != old
    for secret in (old, new):
        fetch_token(api, service, secret)
    # A token from the old secret never outlives the grace period.
    ServiceClient.objects.filter(pk=service.pk).update(
        previous_secret_valid_until=timezone.now() + timedelta(seconds=30)
    )
    body = fetch_token(api, service, old)
    assert body["expires_in"] <= 30
    ServiceClient.objects.filter(pk=service.pk).update(
        previous_secret_valid_until=timezone.now() - timedelta(seconds=1)
    )
    refused = post_form(
        api, {"grant_type": "client_credentials"}, HTTP_AUTHORIZATION=basic(service.client_id, old)
    )
    assert refused.status_code == 401
    fetch_token(api, service, new)


def test_rotation_without_grace_kills_the_old_secret_and_its_tokens(api):
    service, old = service_and_secret()
    old_token = fetch_token(api, service, old)["access_token"]
    assert api.get("/api/v1/ping", HTTP_AUTHORIZATION=f"Bearer {old_token}").status_code == 200
    service_secrets.rotate_secret(service, timedelta(0))
    assert service_secrets.matched_secret(service, old) is None
    assert api.get("/api/v1/ping", HTTP_AUTHORIZATION=f"Bearer {old_token}").status_code == 401


def test_disabling_a_service_kills_its_broker_tokens_at_once(api):
    service, secret = service_and_secret()
    token = fetch_token(api, service, secret)["access_token"]
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    assert api.get("/api/v1/ping", **headers).status_code == 200
    tokens.disable_service(service)
    response = api.get("/api/v1/ping", **headers)
    assert response.status_code == 401 and response.json()["error"] == "invalid_token"


def test_disabling_by_a_plain_update_kills_tokens_at_once(api):
    """An edit that bypasses disable_service() is refused on the next request too."""
    service, secret = service_and_secret()
    token = fetch_token(api, service, secret)["access_token"]
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    assert api.get("/api/v1/ping", **headers).status_code == 200
    ServiceClient.objects.filter(pk=service.pk).update(enabled=False)
    assert api.get("/api/v1/ping", **headers).status_code == 401


def test_it_refuses_expired_and_forged_broker_tokens(api, settings):
    service, secret = service_and_secret()
    settings.BROKER_API_TOKEN_SECONDS = 1
    token = fetch_token(api, service, secret)["access_token"]
    body, _, signature = token.rpartition(".")
    forged = body[:-2] + ("AA" if body[-2:] != "AA" else "BB") + "." + signature
    assert api.get("/api/v1/ping", HTTP_AUTHORIZATION=f"Bearer {forged}").status_code == 401
    time.sleep(1.1)
    expired = api.get("/api/v1/ping", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert expired.status_code == 401
    assert expired["WWW-Authenticate"].startswith("Bearer")
    assert len(audit_events(action="service.auth_failed")) == 2


def test_it_limits_each_service_to_its_rate(api, settings):
    settings.BROKER_API_RATE_LIMIT = 3
    service, secret = service_and_secret()
    token = fetch_token(api, service, secret)["access_token"]  # the token request counts too
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    assert [api.get("/api/v1/ping", **headers).status_code for _ in range(3)] == [200, 200, 429]
    limited = api.get("/api/v1/ping", **headers)
    assert limited.status_code == 429 and 1 <= int(limited["Retry-After"]) <= 61
    assert limited.json()["error"] == "rate_limited"
    # Another service has its own budget.
    other, other_secret = service_and_secret("other")
    other_token = fetch_token(api, other, other_secret)["access_token"]
    assert api.get("/api/v1/ping", HTTP_AUTHORIZATION=f"Bearer {other_token}").status_code == 200
    assert audit_events(action="token.denied", service=service.client_id)
