"""End to end against the sandbox provider over real HTTP: a service authenticates with
private_key_jwt, gets a user's token from the broker and calls the provider with it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from io import StringIO

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from django.core.management import call_command

from broker.models import Grant, ProviderApp
from broker.providers.oauth2_client import exchange_code
from broker.refresh.schedule import apply_token_response
from tests.api.conftest import fetch_token
from tests.api.test_private_key_jwt import assertion, claims_for, public_pem, request_token
from tests.factories import service_and_secret
from tests.sandbox_server import SandboxServer, start_sandbox
from tests.test_sandbox_provider import BROKER_URL, authorization_code, oauth1_dance, read_toml

pytestmark = [pytest.mark.django_db, pytest.mark.sandbox]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    server = start_sandbox(tmp_path_factory.mktemp("sandbox"), BROKER_URL, access_token_seconds=600)
    yield server
    server.stop()


@pytest.fixture
def apps(sandbox: SandboxServer, db) -> dict:
    call_command("loadproviders", str(sandbox.providers_file), stdout=StringIO())
    return read_toml(sandbox.providers_file)["apps"]


@pytest.fixture
def key_service(tmp_path):
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "service.pem"
    path.write_text(public_pem(private))
    out = StringIO()
    call_command("createserviceclient", "E2E", "--public-key", str(path), "--json", stdout=out)
    created = json.loads(out.getvalue())
    return created["client_id"], created["kid"], private


def broker_token(api, key_service) -> dict[str, str]:
    client_id, kid, private = key_service
    response = request_token(api, assertion(private, {"kid": kid}, claims_for(client_id), "PS256"))
    assert response.status_code == 200, response.content
    return {"HTTP_AUTHORIZATION": f"Bearer {response.json()['access_token']}"}


def test_a_service_gets_a_sandbox_token_and_calls_me(api, sandbox, apps, owner, key_service):
    app = ProviderApp.objects.get(slug="sandbox")
    code, _ = authorization_code(sandbox, apps["sandbox"], "sandbox")
    response = exchange_code(app, code=code, redirect_uri=f"{BROKER_URL}/oauth/callback/sandbox")
    grant = Grant(user=owner, provider_app=app, external_account_id="alice-sandbox")
    apply_token_response(grant, response, refreshed=False)
    grant.save()
    call_command("addaccessrule", key_service[0], "--provider", "sandbox", stdout=StringIO())

    body = api.post(
        "/api/v1/access-token",
        {"user": "alice", "provider": "sandbox", "min_ttl": 60},
        content_type="application/json",
        **broker_token(api, key_service),
    ).json()

    me = requests.get(
        f"{sandbox.url}/me", headers={"Authorization": f"Bearer {body['access_token']}"}, timeout=10
    )
    assert me.status_code == 200, me.text
    assert me.json()["name"] == "Alice Anders"
    assert body["grant"] == str(grant.pk) and body["expires_in"] > 60


def test_a_service_gets_a_signed_header_and_calls_myself(api, sandbox, apps, owner, key_service):
    app = ProviderApp.objects.get(slug="sandbox-jira")
    session = oauth1_dance(sandbox, apps, "sandbox-jira")
    grant = Grant(user=owner, provider_app=app, external_account_id="alice-jira")
    grant.seal("access_token", session.token["oauth_token"])
    grant.seal("token_secret", session.token["oauth_token_secret"])
    grant.save()
    call_command(
        "addaccessrule", key_service[0], "--provider", "sandbox-jira", "--sign", stdout=StringIO()
    )
    url = f"{apps['sandbox-jira']['base_url']}/rest/api/2/myself"

    signed = api.post(
        "/api/v1/sign",
        {"user": "alice", "provider": "sandbox-jira", "method": "GET", "url": url},
        content_type="application/json",
        **broker_token(api, key_service),
    )
    assert signed.status_code == 200, signed.content

    myself = requests.get(
        url, headers={"Authorization": signed.json()["authorization"]}, timeout=10
    )
    assert myself.status_code == 200, myself.text
    assert myself.json()["name"] == "alice"


@pytest.fixture
def sandbox_grant(sandbox, apps, owner, key_service) -> Grant:
    """A sandbox grant, readable by the key service, whose access token has run out."""
    from django.utils import timezone

    app = ProviderApp.objects.get(slug="sandbox")
    code, _ = authorization_code(sandbox, apps["sandbox"], "sandbox")
    response = exchange_code(app, code=code, redirect_uri=f"{BROKER_URL}/oauth/callback/sandbox")
    grant = Grant(user=owner, provider_app=app, external_account_id="alice-sandbox")
    apply_token_response(grant, response, refreshed=False)
    grant.access_expires_at = timezone.now()  # as if its hour had passed
    grant.save()
    call_command("addaccessrule", key_service[0], "--provider", "sandbox", stdout=StringIO())
    return grant


def access_token(api, key_service, **body):
    return api.post(
        "/api/v1/access-token",
        {"user": "alice", "provider": "sandbox", **body},
        content_type="application/json",
        **broker_token(api, key_service),
    )


@pytest.mark.django_db(transaction=True)
def test_a_stale_token_is_refreshed_once_and_works(api, sandbox, sandbox_grant, key_service):
    stale = sandbox_grant.unseal("access_token")
    sandbox.reset_counters()
    response = access_token(api, key_service, min_ttl=60)
    assert response.status_code == 200, response.content
    fresh = response.json()["access_token"]
    assert fresh != stale and response.json()["expires_in"] >= 60
    assert sandbox.counters()["token"]["refresh_token"] == 1
    me = requests.get(f"{sandbox.url}/me", headers={"Authorization": f"Bearer {fresh}"}, timeout=10)
    assert me.status_code == 200
    # Served from the store now: no second refresh.
    assert access_token(api, key_service).json()["access_token"] == fresh
    assert sandbox.counters()["token"]["refresh_token"] == 1


@pytest.mark.django_db(transaction=True)
def test_force_refresh_returns_a_token_from_a_new_refresh(api, sandbox, sandbox_grant, key_service):
    first = access_token(api, key_service).json()["access_token"]
    forced = access_token(api, key_service, force_refresh=True)
    assert forced.status_code == 200 and forced.json()["access_token"] != first


@pytest.mark.django_db(transaction=True)
def test_a_grant_dead_at_the_provider_is_409(api, sandbox, sandbox_grant, key_service):
    sandbox.revoke_user("alice")
    response = access_token(api, key_service)
    assert response.status_code == 409 and response.json()["error"] == "reconnect_required"
    assert "access_token" not in response.json()


@pytest.mark.django_db(transaction=True)
def test_a_failing_provider_is_503_with_retry_after(api, sandbox, sandbox_grant, key_service):
    sandbox.faults(mode="error500")
    try:
        response = access_token(api, key_service)
    finally:
        sandbox.faults(mode="none")
    assert response.status_code == 503 and int(response["Retry-After"]) >= 1
    assert response.json()["error"] == "temporarily_unavailable"
    assert "access_token" not in response.json()


# -- a failing provider while a token is still valid ------------------------------------------


def expiring_in(grant: Grant, seconds: int) -> None:
    """The stored token of an hour-long lifetime now has `seconds` left (below min_ttl)."""
    from datetime import timedelta

    from django.utils import timezone

    now = timezone.now()
    Grant.objects.filter(pk=grant.pk).update(
        access_expires_at=now + timedelta(seconds=seconds),
        consented_at=now - timedelta(seconds=3600 - seconds),
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("mode", ["error500", "ratelimit"])
def test_a_failed_refresh_serves_the_still_valid_token_with_its_true_expiry(
    api, sandbox, sandbox_grant, key_service, mode
):
    expiring_in(sandbox_grant, 9)
    stored_token = sandbox_grant.unseal("access_token")
    sandbox.reset_counters()
    sandbox.faults(mode=mode)
    try:
        served = access_token(api, key_service, min_ttl=60)
        forced = access_token(api, key_service, force_refresh=True)
    finally:
        sandbox.faults(mode="none")
    assert served.status_code == 200, served.content
    assert served.json()["access_token"] == stored_token
    assert 1 <= served.json()["expires_in"] <= 9  # the truth, below the min_ttl asked for
    # The refresh was tried (and failed) for each request; force_refresh gets no old token.
    assert sandbox.counters()["token"]["refresh_token"] == 2
    assert forced.status_code == 503 and int(forced["Retry-After"]) >= 1
    assert "access_token" not in forced.json()
    assert Grant.objects.get(pk=sandbox_grant.pk).status == Grant.Status.ACTIVE


@pytest.mark.django_db(transaction=True)
def test_a_failed_refresh_with_no_valid_token_left_is_503(api, sandbox, sandbox_grant, key_service):
    expiring_in(sandbox_grant, 0)
    sandbox.faults(mode="ratelimit", retry_after=7)
    try:
        response = access_token(api, key_service, min_ttl=60)
    finally:
        sandbox.faults(mode="none")
    assert response.status_code == 503 and int(response["Retry-After"]) >= 7
    assert "no valid token is left" in response.json()["error_description"]
    assert "access_token" not in response.json()


# -- the token's scopes, and the rules' ----------------------------------------------------------


@pytest.fixture
def dc_grant(sandbox, apps, owner, settings) -> Grant:
    """Alice's Jira Data Center (OAuth 2.0) grant with READ WRITE, its token run out."""
    from django.utils import timezone

    settings.BROKER_PUBLIC_URL = BROKER_URL
    app = ProviderApp.objects.get(slug="sandbox-dc")
    code, verifier = authorization_code(
        sandbox, apps["sandbox-dc"], "sandbox-dc", path="/rest/oauth2/latest/authorize", pkce=True
    )
    response = exchange_code(
        app,
        code=code,
        redirect_uri=f"{BROKER_URL}/oauth/callback/sandbox-dc",
        code_verifier=verifier,
    )
    grant = Grant(
        user=owner,
        provider_app=app,
        external_account_id="alice-dc",
        redirect_uri=f"{BROKER_URL}/oauth/callback/sandbox-dc",  # as the consent stores it
    )
    apply_token_response(grant, response, refreshed=False)
    grant.access_expires_at = timezone.now()
    grant.save()
    assert sorted(grant.scopes) == ["READ", "WRITE"]  # as the provider's token response says
    return grant


def service_with_rule(api, name: str, *rule_args: str) -> dict[str, str]:
    """A new secret service with one rule (`addaccessrule` arguments); its bearer header."""
    service, secret = service_and_secret(name)
    call_command("addaccessrule", service.client_id, *rule_args, stdout=StringIO())
    return {"HTTP_AUTHORIZATION": f"Bearer {fetch_token(api, service, secret)['access_token']}"}


@pytest.mark.django_db(transaction=True)
def test_a_rule_allowing_less_than_the_token_carries_gets_no_token(api, sandbox, dc_grant):
    reader = service_with_rule(api, "reader", "--provider", "sandbox-dc", "--scopes", "READ")
    everything = service_with_rule(api, "writer", "--provider", "sandbox-dc")
    body = {"user": "alice", "provider": "sandbox-dc"}
    sandbox.reset_counters()

    refused = api.post("/api/v1/access-token", body, content_type="application/json", **reader)
    assert refused.status_code == 403 and refused.json()["error"] == "insufficient_scope"
    assert "WRITE" in refused.json()["error_description"]
    assert "access_token" not in refused.json()
    assert sandbox.counters()["token"]["refresh_token"] == 0  # not even refreshed for it

    served = api.post("/api/v1/access-token", body, content_type="application/json", **everything)
    assert served.status_code == 200, served.content
    assert served.json()["scopes"] == ["READ", "WRITE"]  # what the refreshed token carries
    assert sandbox.counters()["token"]["refresh_token"] == 1
    me = requests.get(
        f"{sandbox.url}/me",
        headers={"Authorization": f"Bearer {served.json()['access_token']}"},
        timeout=10,
    )
    assert me.status_code == 200


# -- deactivated users ------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_deactivated_users_grant_is_neither_served_nor_refreshed_until_reactivated(
    api, sandbox, sandbox_grant, key_service, owner
):
    from django.utils import timezone

    from broker.refresh import claims, on_demand, single_flight

    Grant.objects.filter(pk=sandbox_grant.pk).update(next_refresh_at=timezone.now())
    owner.is_active = False
    owner.save(update_fields=["is_active"])
    sandbox.reset_counters()

    response = access_token(api, key_service, min_ttl=60)
    assert response.status_code == 404 and "access_token" not in response.json()
    listed = api.get("/api/v1/grants", **broker_token(api, key_service)).json()["grants"]
    assert listed == []
    assert claims.claim_due_grants(on_claimed=lambda ids: None) == []
    assert claims.refresh_grant_now(sandbox_grant.pk).result == single_flight.Result.GONE
    with pytest.raises(on_demand.UserDeactivated):
        on_demand.ensure_fresh(sandbox_grant.pk, min_ttl=60, force_refresh=True)
    assert sandbox.counters()["token"]["refresh_token"] == 0  # nothing went upstream
    kept = Grant.objects.get(pk=sandbox_grant.pk)
    assert kept.status == Grant.Status.ACTIVE and kept.has_secret("refresh_token")

    owner.is_active = True
    owner.save(update_fields=["is_active"])
    assert claims.claim_due_grants(on_claimed=lambda ids: None) == [str(sandbox_grant.pk)]
    restored = access_token(api, key_service, min_ttl=60)
    assert restored.status_code == 200, restored.content
    assert restored.json()["expires_in"] >= 60
    assert sandbox.counters()["token"]["refresh_token"] == 1
