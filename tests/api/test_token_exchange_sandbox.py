"""Token exchange end to end over real HTTP: the sandbox is the company IdP (it issues
alice's ID token to the service's own sign-in, the `demo-assistant` client) and the provider
(its access token works at /me); the service exchanges her ID token at the live broker for
her sandbox token. ID tokens issued to the broker's own sign-in (`broker-sso`) never work."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import pytest
import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session

from accounts.models import User
from broker.models import AccessRule, AuditEvent, ServiceClient
from tests.factories import service_and_secret
from tests.sandbox_grants import TIMEOUT, connect_grant, refresh_count, signed_in_browser
from tests.test_sso_sandbox import sso_sign_in

pytestmark = [pytest.mark.sandbox, pytest.mark.django_db(transaction=True)]

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
# The sandbox's public client standing for a service's own sign-in (sandbox_setup).
DEMO_SERVICE = "demo-assistant"
DEMO_SERVICE_REDIRECT_URI = "http://127.0.0.1:8002/oidc/callback"


def sandbox_id_token(sandbox, live_server, username: str, issued_to: str = DEMO_SERVICE) -> str:
    """A real ID token for `username`, issued to `issued_to`: the authorization code flow
    (PKCE) of the demo service's public client, or of the broker's own (`broker-sso`)."""
    sso = sandbox.sso_settings()
    issuer = sso["BROKER_OIDC_ISSUER"]
    metadata = requests.get(f"{issuer}/.well-known/openid-configuration", timeout=TIMEOUT).json()
    if issued_to == sso["BROKER_OIDC_CLIENT_ID"]:
        secret, redirect_uri = (
            sso["BROKER_OIDC_CLIENT_SECRET"],
            f"{live_server.url}/accounts/oidc/callback",
        )
        auth_method = "client_secret_basic"
    else:
        secret, redirect_uri, auth_method = None, DEMO_SERVICE_REDIRECT_URI, "none"
    with OAuth2Session(
        issued_to,
        secret,
        redirect_uri=redirect_uri,
        scope="openid profile email",
        code_challenge_method="S256",
        token_endpoint_auth_method=auth_method,
    ) as client:
        verifier = generate_token(48)
        url, state = client.create_authorization_url(
            metadata["authorization_endpoint"], code_verifier=verifier, nonce=generate_token(16)
        )
        answer = signed_in_browser(sandbox, username).get(
            url, allow_redirects=False, timeout=TIMEOUT
        )
        query = parse_qs(urlparse(answer.headers["Location"]).query)
        assert query["state"] == [state], answer.headers["Location"]
        token = client.fetch_token(
            metadata["token_endpoint"], code=query["code"][0], code_verifier=verifier
        )
    id_token: str = token["id_token"]
    return id_token


@pytest.fixture
def assistant(sandbox_sso, sandbox_apps) -> tuple[ServiceClient, str]:
    service, secret = service_and_secret("assistant")
    service.subject_audiences = [DEMO_SERVICE]
    service.save()
    AccessRule.objects.create(
        service=service, provider_app=sandbox_apps["sandbox"], on_behalf_of=True
    )
    return service, secret


@pytest.fixture
def alice(sandbox_sso, live_server) -> User:
    """Alice signed in once with single sign-on (linking her sandbox identity)."""
    with sso_sign_in(live_server, sandbox_sso, "alice"):
        return User.objects.get(username="alice")


def exchange(live_server, service_and_secret, subject_token: str) -> requests.Response:
    service, secret = service_and_secret
    return requests.post(
        f"{live_server.url}/api/v1/oauth/token",
        data={
            "grant_type": EXCHANGE,
            "subject_token": subject_token,
            "subject_token_type": ID_TOKEN,
            "audience": "sandbox",
        },
        auth=(service.client_id, secret),
        timeout=TIMEOUT,
    )


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("at"))


def test_a_service_exchanges_alices_id_token_for_her_sandbox_token(
    sandbox_sso, live_server, alice, assistant
):
    connect_grant(sandbox_sso, alice)
    response = exchange(live_server, assistant, sandbox_id_token(sandbox_sso, live_server, "alice"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    assert body["token_type"] == "Bearer"
    me = requests.get(
        f"{sandbox_sso.url}/me",
        headers={"Authorization": f"Bearer {body['access_token']}"},
        timeout=TIMEOUT,
    )
    assert me.status_code == 200 and "alice" in me.text
    [event] = events("token.exchanged")
    assert (event.service, event.subject_user) == (assistant[0].client_id, "alice")
    assert event.detail["subject_issuer"] == sandbox_sso.url


def test_refusals_serve_nothing_and_call_no_provider(
    sandbox_sso, live_server, alice, assistant, sandbox_apps
):
    connect_grant(sandbox_sso, alice)
    with sso_sign_in(live_server, sandbox_sso, "bob"):  # bob has no sandbox grant
        pass
    other, other_secret = service_and_secret("other")  # registered for another audience
    other.subject_audiences = ["another-app"]
    other.save()
    AccessRule.objects.create(
        service=other, provider_app=sandbox_apps["sandbox"], on_behalf_of=True
    )
    alices_token = sandbox_id_token(sandbox_sso, live_server, "alice")
    refreshes = refresh_count(sandbox_sso)

    no_grant = exchange(live_server, assistant, sandbox_id_token(sandbox_sso, live_server, "bob"))
    assert no_grant.status_code == 400 and no_grant.json()["error"] == "invalid_target"
    wrong_audience = exchange(live_server, (other, other_secret), alices_token)
    assert wrong_audience.status_code == 400
    assert wrong_audience.json()["error"] == "invalid_request"
    User.objects.filter(pk=alice.pk).update(is_active=False)
    deactivated = exchange(live_server, assistant, alices_token)
    assert deactivated.status_code == 400 and "access_token" not in deactivated.json()

    assert refresh_count(sandbox_sso) == refreshes
    assert not events("token.exchanged")
    denied = events("token.exchange_denied")
    assert [(e.service, e.detail["reason"]) for e in denied] == [
        (assistant[0].client_id, "invalid_target"),
        (other.client_id, "invalid_request"),
        (assistant[0].client_id, "invalid_request"),
    ]


def test_an_id_token_issued_to_the_brokers_own_sign_in_is_refused(
    sandbox_sso, live_server, alice, assistant
):
    """Issue 25 item 5: users' sign-in ID tokens (aud = BROKER_OIDC_CLIENT_ID) are refused,
    even for a service whose row lists that audience (written before registration refused
    it, or by a raw update)."""
    connect_grant(sandbox_sso, alice)
    service, _ = assistant
    ServiceClient.objects.filter(pk=service.pk).update(subject_audiences=["broker-sso"])
    brokers_own = sandbox_id_token(sandbox_sso, live_server, "alice", issued_to="broker-sso")
    refreshes = refresh_count(sandbox_sso)

    refused = exchange(live_server, assistant, brokers_own)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"] == "invalid_request" and "access_token" not in refused.json()
    assert "broker's own sign-in" in refused.json()["error_description"]
    assert refresh_count(sandbox_sso) == refreshes
    assert not events("token.exchanged")
    [denied] = events("token.exchange_denied")
    assert (denied.service, denied.detail["reason"]) == (service.client_id, "invalid_request")
