"""OAuth 2.0 consent against the sandbox provider over real HTTP: the happy paths for each
token encoding, and every attack on the callback, each checked for what did NOT happen."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import requests
from django.utils import timezone

from broker.models import AuditEvent, Grant, PendingAuthorization, ProviderApp
from broker.refresh.on_demand import ensure_fresh
from tests.consent_driver import (
    answer_consent,
    callback_url,
    press_connect,
    query_of,
    sign_in_to_sandbox,
    visit,
)

pytestmark = [pytest.mark.sandbox, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def alice(sandbox_apps, owner, broker_login, sandbox):
    """Broker user alice, signed in to the broker and (as alice) to the sandbox."""
    session = broker_login("alice", "alice-broker")
    sign_in_to_sandbox(session, sandbox.url, "alice")
    return session


@pytest.fixture
def mallory(sandbox_apps, outsider, broker_login, sandbox):
    session = broker_login("mallory", "mallory-broker")
    sign_in_to_sandbox(session, sandbox.url, "bob")
    return session


def codes_exchanged(sandbox) -> int:
    return sandbox.counters()["token"]["authorization_code"]


def snapshot(grant: Grant) -> dict:
    return Grant.objects.filter(pk=grant.pk).values().get()


def actions() -> list[str]:
    return list(AuditEvent.objects.order_by("at", "id").values_list("action", flat=True))


# -- connecting ---------------------------------------------------------------------------


def test_connect_stores_the_atlassian_grant_with_every_site(alice, live_server, owner):
    url = callback_url(alice, live_server.url, "sandbox")
    response = visit(alice, url)
    assert response.status_code == 302
    assert response.headers["Location"] == "/connections/"
    assert response.headers["Referrer-Policy"] == "no-referrer"

    grant = Grant.objects.get()
    assert grant.user == owner
    assert grant.provider_app.slug == "sandbox"
    assert grant.external_account_id == "sandbox-alice"
    assert grant.account_name == "Alice Anders"
    assert grant.account_email == "alice@sandbox.example"
    assert grant.status == Grant.Status.ACTIVE
    assert sorted(grant.scopes) == ["offline_access", "read:jira-work", "read:me"]
    assert [site["name"] for site in grant.resources] == ["Acme Jira", "Globex Confluence"]
    for site in grant.resources:
        assert set(site) == {"id", "url", "name", "scopes"}
        assert site["id"] and site["url"].startswith("http://localhost:")
    assert grant.has_secret("access_token") and grant.has_secret("refresh_token")
    assert grant.access_expires_at and grant.next_refresh_at
    assert grant.refresh_absolute_expires_at  # Atlassian's 365 days from consent
    assert PendingAuthorization.objects.get().consumed_at is not None
    event = AuditEvent.objects.get(action="grant.connected")
    assert event.grant_id == grant.id and event.subject_user == "alice"
    assert event.provider == "sandbox" and event.outcome == "success"

    page = alice.get(f"{live_server.url}/connections/").text
    assert f'data-grant="{grant.id}"' in page and 'data-status="active"' in page
    assert "Acme Jira" in page and "Globex Confluence" in page
    assert grant.resources[0]["id"] in page
    assert "sandbox is connected" in page.lower() or "is connected" in page


def test_reconnect_updates_the_same_grant_and_makes_it_active_again(alice, live_server):
    visit(alice, callback_url(alice, live_server.url, "sandbox"))
    grant = Grant.objects.get()
    # The grant died meanwhile (e.g. the refresh token was revoked): tokens wiped.
    grant.wipe_secrets()
    grant.status = Grant.Status.RECONNECT_REQUIRED
    grant.last_error = "invalid_grant"
    grant.save()

    response = visit(alice, callback_url(alice, live_server.url, "sandbox"))
    assert response.status_code == 302

    again = Grant.objects.get()
    assert again.id == grant.id
    assert again.status == Grant.Status.ACTIVE
    assert again.has_secret("access_token") and again.has_secret("refresh_token")
    assert again.token_version > grant.token_version
    assert again.last_error == ""
    assert actions() == ["grant.connected", "grant.reconnected"]


def test_data_center_connect_uses_pkce_and_reads_jira_myself(alice, live_server, sandbox):
    before = codes_exchanged(sandbox)
    authorize = press_connect(alice, live_server.url, "sandbox-dc")
    params = query_of(authorize)
    assert "/rest/oauth2/latest/authorize?" in authorize
    assert params["code_challenge_method"] == "S256" and params["code_challenge"]
    response = visit(alice, answer_consent(alice, authorize))
    assert response.status_code == 302, response.text

    grant = Grant.objects.get()
    assert grant.provider_app.slug == "sandbox-dc"
    assert grant.external_account_id.startswith("JIRAUSER")
    assert grant.account_name == "Alice Anders"
    assert sorted(grant.scopes) == ["READ", "WRITE"]
    assert grant.resources == []
    assert grant.has_secret("refresh_token")
    assert codes_exchanged(sandbox) == before + 1


def test_atlassian_connect_uses_pkce_so_a_stolen_code_is_useless_elsewhere(
    alice, mallory, live_server, sandbox
):
    authorize = press_connect(alice, live_server.url, "sandbox")  # kind "atlassian"
    params = query_of(authorize)
    assert params["code_challenge_method"] == "S256" and params["code_challenge"]
    alice_callback = answer_consent(alice, authorize)
    stolen_code = query_of(alice_callback)["code"]

    # Mallory starts her own consent in her own broker session, then injects alice's code
    # into her callback: the broker sends her session's verifier, which does not match.
    mallory_state = query_of(press_connect(mallory, live_server.url, "sandbox"))["state"]
    exchanged = codes_exchanged(sandbox)
    injected = visit(
        mallory,
        f"{live_server.url}/oauth/callback/sandbox?code={stolen_code}&state={mallory_state}",
    )
    assert injected.status_code == 400 and "did not accept" in injected.text
    assert codes_exchanged(sandbox) == exchanged + 1
    assert not Grant.objects.exists()

    # Alice's callback sends her verifier, and the code works for her.
    assert visit(alice, alice_callback).status_code == 302
    assert Grant.objects.get().user.username == "alice"


def test_data_center_rejects_a_wrong_pkce_verifier_and_nothing_is_stored(alice, live_server):
    url = callback_url(alice, live_server.url, "sandbox-dc")
    pending = PendingAuthorization.objects.get()
    pending.seal("code_verifier", "x" * 64)  # not the verifier of the challenge sent
    pending.save()

    response = visit(alice, url)
    assert response.status_code == 400
    assert "did not accept" in response.text
    assert not Grant.objects.exists()


def test_generic_provider_connect_with_a_form_body(alice, live_server):
    response = visit(alice, callback_url(alice, live_server.url, "sandbox-generic"))
    assert response.status_code == 302, response.text
    grant = Grant.objects.get()
    assert grant.provider_app.slug == "sandbox-generic"
    assert grant.external_account_id == "sandbox-alice"
    assert sorted(grant.scopes) == ["offline_access", "read:me"]


def test_narrowed_scopes_are_what_the_grant_gets(alice, live_server):
    visit(alice, callback_url(alice, live_server.url, "sandbox", scopes="read:me offline_access"))
    assert sorted(Grant.objects.get().scopes) == ["offline_access", "read:me"]


def test_a_narrow_connect_link_keeps_what_the_grant_holds_for_other_services(
    alice, live_server, sandbox
):
    from django.test import Client

    from broker.models import AccessRule
    from tests.api.conftest import fetch_token
    from tests.factories import service_and_secret

    assert visit(alice, callback_url(alice, live_server.url, "sandbox-dc")).status_code == 302
    grant = Grant.objects.get()
    assert sorted(grant.scopes) == ["READ", "WRITE"]
    app = grant.provider_app
    api = Client()
    linker, linker_secret = service_and_secret("linker")
    AccessRule.objects.create(
        service=linker, provider_app=app, scopes=["READ"], can_create_connect_links=True
    )
    writer, writer_secret = service_and_secret("writer")
    AccessRule.objects.create(service=writer, provider_app=app, scopes=["READ", "WRITE"])

    linker_token = fetch_token(api, linker, linker_secret)["access_token"]
    created = api.post(
        "/api/v1/connect-links",
        {
            "user": "alice",
            "provider": "sandbox-dc",
            "scopes": ["READ"],
            "return_to": "/connections/",
        },
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {linker_token}",
    )
    assert created.status_code == 201, created.content
    link = created.json()["url"]
    alice.get(link, timeout=10)
    authorize = alice.post(
        link,
        data={"csrfmiddlewaretoken": alice.cookies["csrftoken"]},
        allow_redirects=False,
        timeout=10,
    ).headers["Location"]
    # Asked for READ, the provider is asked for what the grant holds too.
    assert query_of(authorize)["scope"].split() == ["READ", "WRITE"]
    assert visit(alice, answer_consent(alice, authorize)).status_code == 302

    again = Grant.objects.get()
    assert again.id == grant.id and sorted(again.scopes) == ["READ", "WRITE"]
    assert again.token_version > grant.token_version  # the consent's new tokens
    writer_token = fetch_token(api, writer, writer_secret)["access_token"]
    served = api.post(
        "/api/v1/access-token",
        {"user": "alice", "provider": "sandbox-dc"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {writer_token}",
    )
    assert served.status_code == 200, served.content
    assert served.json()["scopes"] == ["READ", "WRITE"]


# -- the user or the provider says no ----------------------------------------------------


def test_user_denial_ends_on_a_friendly_page_and_stores_nothing(alice, live_server):
    url = callback_url(alice, live_server.url, "sandbox", button="deny")
    assert query_of(url)["error"] == "access_denied"
    response = visit(alice, url)
    assert response.status_code == 200
    assert "You cancelled" in response.text
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert not Grant.objects.exists()
    assert PendingAuthorization.objects.get().consumed_at is not None
    event = AuditEvent.objects.get()
    assert event.action == "grant.consent_failed" and event.detail["reason"] == "user_denied"


def test_provider_error_ends_on_a_clear_page_and_stores_nothing(alice, live_server, sandbox):
    press_connect(alice, live_server.url, "sandbox")
    state = PendingAuthorization.objects.get().state
    before = codes_exchanged(sandbox)
    response = visit(
        alice,
        f"{live_server.url}/oauth/callback/sandbox?error=server_error"
        f"&error_description=Boom&state={state}",
    )
    assert response.status_code == 502
    assert "server_error" in response.text and "Nothing was connected" in response.text
    assert not Grant.objects.exists()
    assert PendingAuthorization.objects.get().consumed_at is not None
    assert AuditEvent.objects.get().action == "grant.consent_failed"
    assert codes_exchanged(sandbox) == before


def test_token_endpoint_outage_asks_to_try_again_and_stores_nothing(alice, live_server, sandbox):
    url = callback_url(alice, live_server.url, "sandbox")
    sandbox.faults(mode="error500", times=1)
    response = visit(alice, url)
    assert response.status_code == 503
    assert "try again" in response.text
    assert not Grant.objects.exists()


def test_wrong_client_secret_tells_the_user_admins_were_told(alice, live_server):
    app = ProviderApp.objects.get(slug="sandbox")
    app.seal("client_secret", "not-the-secret")
    app.save()
    response = visit(alice, callback_url(alice, live_server.url, "sandbox"))
    assert response.status_code == 502
    assert "administrators have been told" in response.text
    assert "try again" not in response.text.lower() and "again</button>" not in response.text
    assert not Grant.objects.exists()
    event = AuditEvent.objects.get()
    assert event.action == "grant.consent_failed" and event.outcome == "failure"
    assert event.detail["reason"] == "client_misconfigured"


# -- attacks on the callback -------------------------------------------------------------


def test_it_rejects_reused_state(alice, live_server, sandbox):
    url = callback_url(alice, live_server.url, "sandbox")
    assert visit(alice, url).status_code == 302
    grant = Grant.objects.get()
    stored = snapshot(grant)
    exchanged = codes_exchanged(sandbox)

    replay = visit(alice, url)
    assert replay.status_code == 400
    assert "already used" in replay.text
    assert snapshot(grant) == stored
    assert codes_exchanged(sandbox) == exchanged  # the code was not even sent again
    assert actions() == ["grant.connected", "grant.consent_failed"]


def test_a_stranger_cannot_burn_the_state_and_the_owner_still_connects(
    alice, mallory, live_server, sandbox
):
    url = callback_url(alice, live_server.url, "sandbox")
    exchanged = codes_exchanged(sandbox)
    response = visit(mallory, url)
    assert response.status_code == 400
    assert "another sign-in session" in response.text
    assert not Grant.objects.exists()
    assert codes_exchanged(sandbox) == exchanged
    # Ownership is checked before the state is consumed: alice's consent is intact...
    assert PendingAuthorization.objects.get().consumed_at is None
    event = AuditEvent.objects.get()
    assert event.actor == "mallory" and event.detail["reason"] == "state_not_bound_to_this_session"
    # ...and her own callback, with the same state, still connects her.
    finished = visit(alice, url)
    assert finished.status_code == 302 and finished.headers["Location"] == "/connections/"
    assert Grant.objects.get().user.username == "alice"
    assert codes_exchanged(sandbox) == exchanged + 1


def test_it_rejects_state_from_another_session_of_the_same_user(
    alice, live_server, broker_login, sandbox
):
    url = callback_url(alice, live_server.url, "sandbox")
    other_session = broker_login("alice", "alice-broker")
    response = visit(other_session, url)
    assert response.status_code == 400
    assert not Grant.objects.exists()
    assert PendingAuthorization.objects.get().consumed_at is None
    assert visit(alice, url).status_code == 302
    assert Grant.objects.count() == 1


@pytest.mark.parametrize("state", [None, "", "made-up-state"])
def test_it_rejects_missing_or_unknown_state(alice, live_server, sandbox, state):
    url = callback_url(alice, live_server.url, "sandbox")
    code = query_of(url)["code"]
    exchanged = codes_exchanged(sandbox)
    suffix = "" if state is None else f"&state={state}"
    response = visit(alice, f"{live_server.url}/oauth/callback/sandbox?code={code}{suffix}")
    assert response.status_code == 400
    assert not Grant.objects.exists()
    assert codes_exchanged(sandbox) == exchanged
    assert PendingAuthorization.objects.get().consumed_at is None  # the real one is untouched


def test_it_rejects_an_expired_pending_authorization(alice, live_server, sandbox):
    url = callback_url(alice, live_server.url, "sandbox")
    PendingAuthorization.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    exchanged = codes_exchanged(sandbox)
    response = visit(alice, url)
    assert response.status_code == 400
    assert "expired" in response.text
    assert not Grant.objects.exists()
    assert codes_exchanged(sandbox) == exchanged


def test_it_rejects_a_state_used_at_another_apps_callback(alice, live_server):
    url = callback_url(alice, live_server.url, "sandbox")
    response = visit(
        alice, url.replace("/oauth/callback/sandbox?", "/oauth/callback/sandbox-generic?")
    )
    assert response.status_code == 400
    assert not Grant.objects.exists()
    assert PendingAuthorization.objects.get().consumed_at is None


def test_it_rejects_a_mismatched_issuer(alice, live_server, sandbox):
    app = ProviderApp.objects.get(slug="sandbox")
    app.endpoints = {**app.endpoints, "issuer": sandbox.url}
    app.save()
    url = callback_url(alice, live_server.url, "sandbox")
    exchanged = codes_exchanged(sandbox)
    response = visit(alice, f"{url}&iss=https%3A%2F%2Fevil.example")
    assert response.status_code == 400
    assert "is not the app" in response.text
    assert not Grant.objects.exists()
    assert codes_exchanged(sandbox) == exchanged
    event = AuditEvent.objects.get()
    assert event.detail["reason"] == "issuer_mismatch" and event.outcome == "denied"


def test_it_accepts_the_configured_issuer(alice, live_server, sandbox):
    app = ProviderApp.objects.get(slug="sandbox")
    app.endpoints = {**app.endpoints, "issuer": sandbox.url}
    app.save()
    url = callback_url(alice, live_server.url, "sandbox")
    response = visit(alice, f"{url}&iss={sandbox.url}")
    assert response.status_code == 302
    assert Grant.objects.exists()


def test_it_rejects_an_issuer_when_none_is_configured(alice, live_server, sandbox):
    url = callback_url(alice, live_server.url, "sandbox")
    response = visit(alice, f"{url}&iss={sandbox.url}")
    assert response.status_code == 400
    assert "no issuer configured" in response.text
    assert not Grant.objects.exists()


def test_code_issued_for_another_redirect_uri_is_refused(alice, live_server, sandbox):
    """The broker sends the redirect URI it remembered for this consent; the sandbox
    issued the code for another one and refuses it (RFC 6749 4.1.3)."""
    url = callback_url(alice, live_server.url, "sandbox")
    PendingAuthorization.objects.update(
        redirect_uri=f"{live_server.url}/oauth/callback/sandbox-generic"
    )
    exchanged = codes_exchanged(sandbox)
    response = visit(alice, url)
    assert response.status_code == 400
    assert "refused the authorization code" in response.text
    assert not Grant.objects.exists()
    assert codes_exchanged(sandbox) == exchanged + 1


@pytest.mark.parametrize(
    "return_to",
    [
        "//evil.example/",
        "https://evil.example/",
        "javascript:alert(document.domain)",
        "/\\evil.example",
        "https://127.0.0.1.evil.example/",
    ],
)
def test_open_redirect_attempts_end_on_my_connections(alice, live_server, return_to):
    response = visit(alice, callback_url(alice, live_server.url, "sandbox", return_to=return_to))
    assert response.status_code == 302
    assert response.headers["Location"] == "/connections/"
    assert Grant.objects.exists()  # the consent itself is fine


def test_an_unsafe_return_url_in_the_pending_row_is_not_followed(alice, live_server):
    url = callback_url(alice, live_server.url, "sandbox")
    PendingAuthorization.objects.update(return_to="//evil.example/")
    response = visit(alice, url)
    assert response.headers["Location"] == "/connections/"


def test_allow_listed_return_url_is_followed(alice, live_server, settings):
    settings.BROKER_RETURN_URL_ALLOWLIST = ["https://app.example"]
    response = visit(
        alice,
        callback_url(alice, live_server.url, "sandbox", return_to="https://app.example/done?x=1"),
    )
    assert response.headers["Location"] == "https://app.example/done?x=1"


def test_callback_requires_sign_in(alice, live_server, broker_login):
    url = callback_url(alice, live_server.url, "sandbox")
    import requests

    response = requests.get(url, allow_redirects=False, timeout=10)
    assert response.status_code == 302 and "/accounts/login/" in response.headers["Location"]
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert not Grant.objects.exists()
    assert PendingAuthorization.objects.get().consumed_at is None


def test_two_simultaneous_callbacks_with_one_state_connect_once(alice, live_server, sandbox):
    url = callback_url(alice, live_server.url, "sandbox")
    exchanged = codes_exchanged(sandbox)
    with ThreadPoolExecutor(max_workers=2) as pool:
        statuses = sorted(pool.map(lambda _: visit(alice, url).status_code, range(2)))
    assert statuses == [302, 400]
    assert Grant.objects.count() == 1
    assert codes_exchanged(sandbox) == exchanged + 1
    assert actions().count("grant.connected") == 1


def test_a_new_grant_is_announced_to_subscribed_services_once(alice, live_server):
    from broker.models import AccessRule, ServiceClient, WebhookDelivery
    from broker.service_identity.service_secrets import new_webhook_secret

    service = ServiceClient.objects.create(
        client_id="svc-hooks", name="Hooks", webhook_url="https://hooks.example/broker"
    )
    new_webhook_secret(service)
    AccessRule.objects.create(service=service, provider_app=ProviderApp.objects.get(slug="sandbox"))

    visit(alice, callback_url(alice, live_server.url, "sandbox"))
    delivery = WebhookDelivery.objects.get(service=service)
    assert delivery.event == "grant.created"
    assert delivery.grant_id == Grant.objects.get().id

    visit(alice, callback_url(alice, live_server.url, "sandbox"))  # a reconnect is no new grant
    assert WebhookDelivery.objects.filter(event="grant.created").count() == 1


def test_a_data_center_grant_refreshes_with_its_consents_redirect_uri_after_the_url_moved(
    alice, live_server, sandbox, settings
):
    """Data Center checks that a refresh repeats the consent's redirect_uri: moving
    BROKER_PUBLIC_URL afterwards must not kill the grants made before."""
    visit(alice, callback_url(alice, live_server.url, "sandbox-dc"))
    grant = Grant.objects.get()
    assert grant.redirect_uri == f"{live_server.url}/oauth/callback/sandbox-dc"
    settings.BROKER_PUBLIC_URL = "https://broker.moved.example"
    fresh = ensure_fresh(grant.pk, min_ttl=1, force_refresh=True)
    assert fresh.status == Grant.Status.ACTIVE
    assert fresh.token_version == grant.token_version + 1
    assert fresh.unseal("access_token") != grant.unseal("access_token")
    myself = requests.get(
        f"{sandbox.url}/rest/api/2/myself",
        headers={"Authorization": f"Bearer {fresh.unseal('access_token')}"},
        timeout=10,
    )
    assert myself.status_code == 200
