"""The authorization request per kind (RFC 6749 4.1.1, RFC 7636 4.3) and what Connect stores."""

from urllib.parse import parse_qs, urlsplit

import pytest
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from django.test import Client

from broker.models import AuditEvent, PendingAuthorization, ProviderApp


def query(url: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(url).query).items()}


@pytest.fixture
def apps(db, settings):
    settings.BROKER_PUBLIC_URL = "https://broker.example"
    cloud = ProviderApp.objects.create(
        slug="atlassian",
        kind="atlassian",
        name="Atlassian",
        client_id="cloud-client",
        scopes=["read:me", "read:jira-work", "offline_access"],
    )
    dc = ProviderApp.objects.create(
        slug="jira-acme",
        kind="jira-dc-oauth2",
        name="Jira (Acme)",
        client_id="dc-client",
        base_url="https://jira.acme.example",
        scopes=["READ", "WRITE"],
    )
    return {"atlassian": cloud, "jira-acme": dc}


@pytest.fixture
def signed_in(owner):
    client = Client()
    client.force_login(owner)
    return client


def test_atlassian_gets_audience_prompt_and_an_s256_challenge(apps, signed_in):
    response = signed_in.post("/connect/atlassian")
    assert response.status_code == 302
    location = response["Location"]
    assert location.startswith("https://auth.atlassian.com/authorize?")
    params = query(location)
    pending = PendingAuthorization.objects.get()
    verifier = pending.unseal("code_verifier")
    assert verifier and verifier not in location
    assert params == {
        "response_type": "code",
        "client_id": "cloud-client",
        "redirect_uri": "https://broker.example/oauth/callback/atlassian",
        "scope": "read:me read:jira-work offline_access",
        "state": pending.state,
        "audience": "api.atlassian.com",
        "prompt": "consent",
        "code_challenge": create_s256_code_challenge(verifier),
        "code_challenge_method": "S256",
    }
    assert pending.redirect_uri == "https://broker.example/oauth/callback/atlassian"
    assert pending.scopes == ["read:me", "read:jira-work", "offline_access"]


def test_data_center_gets_an_s256_challenge_of_the_sealed_verifier(apps, signed_in):
    response = signed_in.post("/connect/jira-acme")
    location = response["Location"]
    assert location.startswith("https://jira.acme.example/rest/oauth2/latest/authorize?")
    params = query(location)
    pending = PendingAuthorization.objects.get()
    verifier = pending.unseal("code_verifier")
    assert verifier and 43 <= len(verifier) <= 128
    assert verifier not in pending.code_verifier_sealed  # stored encrypted only
    assert params["code_challenge_method"] == "S256"
    assert params["code_challenge"] == create_s256_code_challenge(verifier)
    assert verifier not in location
    assert params["scope"] == "READ WRITE"
    assert "audience" not in params and "prompt" not in params


def test_pending_authorization_is_bound_to_user_and_session_and_expires(apps, signed_in, owner):
    signed_in.post("/connect/atlassian")
    pending = PendingAuthorization.objects.get()
    assert pending.user == owner
    session_key = signed_in.session.session_key
    assert session_key and session_key not in pending.session_digest
    assert len(pending.session_digest) == 64
    lifetime = pending.expires_at - pending.created_at
    assert 599 <= lifetime.total_seconds() <= 601
    assert pending.consumed_at is None
    assert len(pending.state) >= 43


def test_it_narrows_scopes_on_request(apps, signed_in):
    response = signed_in.post("/connect/atlassian", {"scopes": "read:me offline_access"})
    assert query(response["Location"])["scope"] == "read:me offline_access"
    assert PendingAuthorization.objects.get().scopes == ["read:me", "offline_access"]


@pytest.mark.parametrize("status", ["active", "reconnect_required"])
def test_a_narrow_request_still_asks_for_what_the_grant_holds(apps, signed_in, owner, status):
    from broker.models import Grant

    Grant.objects.create(
        user=owner,
        provider_app=apps["atlassian"],
        external_account_id="acct",
        scopes=["read:me", "read:jira-work", "offline_access"],
        status=status,
    )
    Grant.objects.create(  # a revoked grant holds nothing any more
        user=owner,
        provider_app=apps["jira-acme"],
        external_account_id="acct",
        scopes=["READ", "WRITE"],
        status="revoked",
    )
    response = signed_in.post("/connect/atlassian", {"scopes": "read:me"})
    assert query(response["Location"])["scope"] == "read:me read:jira-work offline_access"
    assert PendingAuthorization.objects.get().scopes == [
        "read:me",
        "read:jira-work",
        "offline_access",
    ]
    dc = signed_in.post("/connect/jira-acme", {"scopes": "READ"})
    assert query(dc["Location"])["scope"] == "READ"


def test_it_refuses_to_widen_scopes_and_stores_nothing(apps, signed_in):
    response = signed_in.post("/connect/atlassian", {"scopes": "read:me manage:jira-project"})
    assert response.status_code == 400
    assert b"manage:jira-project" in response.content
    assert not PendingAuthorization.objects.exists()


def test_each_consent_gets_its_own_state(apps, signed_in):
    first = query(signed_in.post("/connect/atlassian")["Location"])["state"]
    second = query(signed_in.post("/connect/atlassian")["Location"])["state"]
    assert first != second
    assert PendingAuthorization.objects.count() == 2


def test_connect_requires_sign_in_and_post(apps, signed_in):
    anonymous = Client().post("/connect/atlassian")
    assert anonymous.status_code == 302 and "/accounts/login/" in anonymous["Location"]
    assert signed_in.get("/connect/atlassian").status_code == 405
    assert not PendingAuthorization.objects.exists()


def test_connect_refuses_disabled_and_unknown_apps(apps, signed_in):
    ProviderApp.objects.filter(slug="atlassian").update(enabled=False)
    assert signed_in.post("/connect/atlassian").status_code == 404
    assert signed_in.post("/connect/nope").status_code == 404
    assert not PendingAuthorization.objects.exists()


def test_connect_without_csrf_token_is_refused(apps, owner):
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    response = client.post("/connect/atlassian")
    assert response.status_code == 403
    assert not PendingAuthorization.objects.exists()
    assert not AuditEvent.objects.exists()


def test_unsafe_return_url_is_not_even_stored(apps, signed_in):
    signed_in.post("/connect/atlassian", {"return_to": "https://evil.example/"})
    assert PendingAuthorization.objects.get().return_to == ""


def test_a_kind_the_catalog_marks_as_rejecting_pkce_gets_no_challenge(apps, signed_in, monkeypatch):
    from dataclasses import replace

    from broker.catalog import provider_kinds

    atlassian = replace(provider_kinds.KINDS["atlassian"], rejects_pkce=True)
    monkeypatch.setattr(provider_kinds, "KINDS", {**provider_kinds.KINDS, "atlassian": atlassian})
    params = query(signed_in.post("/connect/atlassian")["Location"])
    assert "code_challenge" not in params and "code_challenge_method" not in params
    assert not PendingAuthorization.objects.get().has_secret("code_verifier")
