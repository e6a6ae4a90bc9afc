"""The OAuth 1.0a consent flow, over real HTTP: the live broker against the sandbox's Jira.

Every attack checks that nothing was stored or changed, not only the status code.
"""

from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.utils import timezone

from broker.models import AuditEvent, Grant, PendingAuthorization, ProviderApp
from tests.consent_driver import TIMEOUT as HTTP_TIMEOUT
from tests.consent_driver import sandbox_consent

pytestmark = pytest.mark.sandbox


def start_connect(broker: requests.Session, base_url: str, slug: str) -> requests.Response:
    """Open My connections and press the app's Connect (a POST with the CSRF token)."""
    page = broker.get(f"{base_url}/connections/", timeout=HTTP_TIMEOUT)
    assert page.status_code == 200 and f'data-provider="{slug}"' in page.text
    return broker.post(
        f"{base_url}/connect/{slug}",
        data={"csrfmiddlewaretoken": broker.cookies["csrftoken"]},
        allow_redirects=False,
        timeout=HTTP_TIMEOUT,
    )


def authorize_url(broker: requests.Session, base_url: str, slug: str) -> str:
    response = start_connect(broker, base_url, slug)
    assert response.status_code == 302, response.text
    return response.headers["Location"]


def callback_for(broker, base_url, slug, username="alice", button="allow") -> str:
    """Connect and consent at the sandbox; the callback URL the browser is sent to."""
    return sandbox_consent(authorize_url(broker, base_url, slug), username, button)


def get(broker: requests.Session, url: str) -> requests.Response:
    return broker.get(url, allow_redirects=False, timeout=HTTP_TIMEOUT)


def connect(broker, base_url, slug, username="alice") -> requests.Response:
    return get(broker, callback_for(broker, base_url, slug, username))


def snapshot() -> list[tuple]:
    """Everything a callback could store or change."""
    return [
        *Grant.objects.values_list(
            "id", "status", "access_token_sealed", "token_secret_sealed", "token_version"
        ).order_by("id"),
        *PendingAuthorization.objects.values_list("id", "consumed_at").order_by("id"),
        *AuditEvent.objects.filter(action__in=["grant.connected", "grant.reconnected"])
        .values_list("id")
        .order_by("id"),
    ]


@pytest.fixture
def alice(owner, sandbox_providers, broker_login):
    return broker_login("alice", "alice-broker")


@pytest.fixture
def mallory(outsider, sandbox_providers, broker_login):
    return broker_login("mallory", "mallory-broker")


@pytest.mark.parametrize("slug", ["sandbox-jira", "sandbox-jira-hmac"])
def test_a_new_user_connects_and_the_grant_is_stored_sealed(alice, owner, live_server, slug):
    start = start_connect(alice, live_server.url, slug)
    assert start.status_code == 302
    location = urlsplit(start.headers["Location"])
    assert location.path == "/plugins/servlet/oauth/authorize"
    request_token = parse_qs(location.query)["oauth_token"][0]
    pending = PendingAuthorization.objects.get(request_token=request_token)
    assert pending.user == owner and pending.consumed_at is None
    assert pending.redirect_uri == f"{live_server.url}/oauth1/callback/{slug}"
    assert pending.has_secret("request_token_secret")
    assert pending.expires_at - timezone.now() <= timedelta(minutes=10)

    callback = sandbox_consent(start.headers["Location"], "alice", "allow")
    assert callback.startswith(f"{live_server.url}/oauth1/callback/{slug}?")
    response = get(alice, callback)
    assert response.status_code == 302
    assert response.headers["Location"] == "/connections/"
    assert response.headers["Referrer-Policy"] == "no-referrer"

    grant = Grant.objects.get()
    assert grant.user == owner
    assert grant.provider_app.slug == slug
    assert grant.status == Grant.Status.ACTIVE
    assert grant.external_account_id.startswith("JIRAUSER")
    assert grant.account_name == "Alice Anders"
    assert grant.account_email == "alice@sandbox.example"
    # Jira's oauth_expires_in: five years.
    assert grant.access_expires_at - timezone.now() > timedelta(days=5 * 365 - 1)
    token, secret = grant.unseal("access_token"), grant.unseal("token_secret")
    assert token and secret
    assert token not in grant.access_token_sealed and secret not in grant.token_secret_sealed
    assert not grant.has_secret("refresh_token")
    assert PendingAuthorization.objects.get(pk=pending.pk).consumed_at is not None
    event = AuditEvent.objects.get(action="grant.connected")
    assert event.grant_id == grant.id and event.subject_user == "alice"
    assert token not in str(event.detail) and secret not in str(event.detail)

    page = alice.get(f"{live_server.url}/connections/", timeout=HTTP_TIMEOUT)
    assert f'data-grant="{grant.id}" data-status="active"' in page.text
    app_name = grant.provider_app.name
    assert f'<li class="success">{app_name} is connected (Alice Anders).</li>' in page.text


def test_reconnecting_updates_the_same_grant(alice, live_server):
    assert connect(alice, live_server.url, "sandbox-jira").status_code == 302
    first = Grant.objects.get()
    first_token = first.unseal("access_token")
    assert connect(alice, live_server.url, "sandbox-jira").status_code == 302

    grant = Grant.objects.get()
    assert grant.id == first.id
    assert grant.token_version == first.token_version + 1
    assert grant.unseal("access_token") != first_token
    assert AuditEvent.objects.filter(action="grant.reconnected", grant_id=grant.id).count() == 1
    page = alice.get(f"{live_server.url}/connections/", timeout=HTTP_TIMEOUT)
    assert "is reconnected (Alice Anders)." in page.text


def test_a_grant_needing_reconnection_becomes_active_again(alice, live_server):
    connect(alice, live_server.url, "sandbox-jira")
    Grant.objects.update(status=Grant.Status.RECONNECT_REQUIRED, failure_count=3)
    connect(alice, live_server.url, "sandbox-jira")
    grant = Grant.objects.get()
    assert grant.status == Grant.Status.ACTIVE and grant.failure_count == 0


def test_denial_ends_on_a_clear_page_and_stores_nothing(alice, live_server):
    callback = callback_for(alice, live_server.url, "sandbox-jira", button="deny")
    assert parse_qs(urlsplit(callback).query)["oauth_verifier"] == ["denied"]
    response = get(alice, callback)
    assert response.status_code == 400
    assert "You declined access" in response.text
    assert "Nothing was stored" in response.text
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert not Grant.objects.exists()
    failed = AuditEvent.objects.get(action="grant.consent_failed")
    assert failed.outcome == "denied" and failed.detail["problem"] == "user_denied"
    # The denied request token cannot be used again either.
    assert get(alice, callback).status_code == 400


def test_it_rejects_a_callback_with_another_users_request_token(alice, mallory, live_server):
    callback = callback_for(alice, live_server.url, "sandbox-jira")
    before = snapshot()
    response = get(mallory, callback)
    assert response.status_code == 400
    assert "could not be completed" in response.text
    assert snapshot() == before
    # Alice's consent was not burnt by the attempt.
    assert get(alice, callback).status_code == 302
    assert Grant.objects.get().user.username == "alice"


def test_it_rejects_a_callback_in_another_session_of_the_same_user(
    alice, broker_login, live_server
):
    callback = callback_for(alice, live_server.url, "sandbox-jira")
    other_browser = broker_login("alice", "alice-broker")
    before = snapshot()
    assert get(other_browser, callback).status_code == 400
    assert snapshot() == before
    # Nothing was consumed: the browser that started the consent still finishes it.
    assert get(alice, callback).status_code == 302


def test_it_rejects_a_replayed_callback(alice, sandbox_providers, live_server):
    callback = callback_for(alice, live_server.url, "sandbox-jira")
    sandbox_providers.reset_counters()
    assert get(alice, callback).status_code == 302
    before = snapshot()
    replay = get(alice, callback)
    assert replay.status_code == 400
    assert snapshot() == before
    # The replay never reached the provider's access-token endpoint.
    assert sandbox_providers.counters()["oauth1_access_token"] == 1


def test_it_rejects_an_unknown_request_token(alice, live_server):
    callback = callback_for(alice, live_server.url, "sandbox-jira")
    query = parse_qs(urlsplit(callback).query)
    before = snapshot()
    verifier = query["oauth_verifier"][0]
    forged = (
        f"{live_server.url}/oauth1/callback/sandbox-jira"
        f"?oauth_token=unknown&oauth_verifier={verifier}"
    )
    assert get(alice, forged).status_code == 400
    # The right token on another app's callback is unknown too.
    other_app = callback.replace("/callback/sandbox-jira?", "/callback/sandbox-jira-hmac?")
    assert get(alice, other_app).status_code == 400
    assert snapshot() == before


def test_it_rejects_a_callback_without_verifier(alice, live_server):
    callback = callback_for(alice, live_server.url, "sandbox-jira")
    token = parse_qs(urlsplit(callback).query)["oauth_token"][0]
    before = snapshot()
    response = get(alice, f"{live_server.url}/oauth1/callback/sandbox-jira?oauth_token={token}")
    assert response.status_code == 400
    assert snapshot() == before


def test_it_rejects_an_expired_pending_authorization(alice, live_server):
    callback = callback_for(alice, live_server.url, "sandbox-jira")
    PendingAuthorization.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    before = snapshot()
    assert get(alice, callback).status_code == 400
    assert snapshot() == before


def test_it_rejects_a_callback_from_a_signed_out_browser(alice, live_server):
    callback = callback_for(alice, live_server.url, "sandbox-jira")
    before = snapshot()
    with requests.Session() as signed_out:
        response = signed_out.get(callback, allow_redirects=False, timeout=HTTP_TIMEOUT)
    assert response.status_code == 400
    assert snapshot() == before


def test_connect_needs_a_signed_in_user_and_a_csrf_token(alice, live_server):
    anonymous = requests.get(
        f"{live_server.url}/connect/sandbox-jira", allow_redirects=False, timeout=10
    )
    assert anonymous.status_code == 302 and "/accounts/login/" in anonymous.headers["Location"]
    no_csrf = alice.post(
        f"{live_server.url}/connect/sandbox-jira", allow_redirects=False, timeout=10
    )
    assert no_csrf.status_code == 403
    assert not PendingAuthorization.objects.exists()


def other_rsa_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def reconfigure(slug: str, **changes) -> None:
    app = ProviderApp.objects.get(slug=slug)
    for name, value in changes.items():
        if name in ("private_key", "client_secret"):
            app.seal(name, value)
        else:
            setattr(app, name, value)
    app.save()


@pytest.mark.parametrize(
    ("changes", "problem", "says"),
    [
        ({"client_id": "nobody"}, "consumer_key_unknown", "Create an application link"),
        ({"private_key": other_rsa_key()}, "signature_invalid", "must match"),
        (
            {"signature_method": "HMAC-SHA1", "client_secret": "not-the-key"},
            "signature_method_rejected",
            "must use incoming authentication with RSA-SHA1",
        ),
    ],
)
def test_provider_errors_end_on_a_page_that_says_what_to_fix(
    alice, live_server, caplog, changes, problem, says
):
    reconfigure("sandbox-jira", **changes)
    with caplog.at_level("DEBUG"):
        response = start_connect(alice, live_server.url, "sandbox-jira")
    assert problem in caplog.text
    assert "PRIVATE KEY" not in caplog.text and "not-the-key" not in caplog.text
    assert response.status_code == 502
    assert says in response.text
    assert f'data-problem="{problem}"' in response.text
    assert f"{live_server.url}/oauth1/callback/sandbox-jira" in response.text
    if problem == "signature_invalid":
        assert "BEGIN PUBLIC KEY" in response.text
    assert "PRIVATE KEY" not in response.text
    assert not PendingAuthorization.objects.exists()
    assert AuditEvent.objects.get(action="grant.consent_failed").detail["problem"] == problem


def test_an_unreachable_provider_ends_on_a_clear_page(alice, live_server):
    import socket

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    reconfigure("sandbox-jira", base_url=f"http://127.0.0.1:{port}")
    response = start_connect(alice, live_server.url, "sandbox-jira")
    assert response.status_code == 502
    assert "could not reach" in response.text
    assert not PendingAuthorization.objects.exists()


def test_an_access_token_error_stores_nothing(alice, sandbox_providers, live_server):
    callback = callback_for(alice, live_server.url, "sandbox-jira")
    # Jira forgets the authorization (e.g. the user revoked it in between).
    sandbox_providers.revoke_user("alice")
    tampered = callback.replace("oauth_verifier=", "oauth_verifier=x")
    response = get(alice, tampered)
    assert response.status_code in (400, 502)
    assert not Grant.objects.exists()
    failed = AuditEvent.objects.get(action="grant.consent_failed")
    assert failed.detail["step"] == "access_token"


def test_the_callback_returns_to_the_pendings_return_to(alice, live_server):
    callback = callback_for(alice, live_server.url, "sandbox-jira")
    PendingAuthorization.objects.update(return_to="/connections/?connected=sandbox-jira")
    response = get(alice, callback)
    assert response.status_code == 302
    assert response.headers["Location"] == "/connections/?connected=sandbox-jira"
