"""Storing an Atlassian API token as a grant, on My connections and in the admin, against the
sandbox's Atlassian-like API (Basic auth at /rest/api/3/myself): checked at the provider
first, sealed, audited; bad expiry dates and refused tokens store nothing."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

import pytest
import requests
from django.contrib.auth.models import Group
from django.db import connection

from broker.admin.roles import AUDITOR_GROUP
from broker.models import AuditEvent, Grant
from broker.providers.api_token_auth import basic_authorization
from tests.sandbox_grants import TIMEOUT

pytestmark = pytest.mark.sandbox

SLUG = "sandbox-api-token"


def today() -> date:
    return datetime.now(UTC).date()


def csrf_post(session: requests.Session, url: str, data: dict[str, str]) -> requests.Response:
    page = session.get(url, timeout=TIMEOUT)
    assert page.status_code == 200, page.text
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert token
    return session.post(
        url,
        data={**data, "csrfmiddlewaretoken": token.group(1)},
        allow_redirects=False,
        timeout=TIMEOUT,
    )


@pytest.fixture
def alice_browser(sandbox_apps, owner, broker_login):
    return broker_login("alice", "alice-broker")


@pytest.fixture
def form_url(live_server) -> str:
    return f"{live_server.url}/connections/api-token/{SLUG}"


def basic_calls(sandbox) -> int:
    return int(sandbox.counters()["api_token_basic"])


def test_the_owner_stores_an_api_token_checked_at_the_provider(
    alice_browser, form_url, sandbox, owner
):
    made = sandbox.api_token("alice", days=200)
    sandbox.reset_counters()
    response = csrf_post(
        alice_browser,
        form_url,
        {"email": made["email"], "api_token": made["api_token"], "expires_on": made["expires_on"]},
    )
    assert response.status_code == 302 and response.headers["Location"] == "/connections/"
    assert basic_calls(sandbox) == 1  # checked once at the provider

    grant = Grant.objects.get(user=owner, provider_app__slug=SLUG)
    assert grant.status == "active" and grant.external_account_id == "sandbox-alice"
    assert grant.account_email == made["email"] and grant.account_name == "Alice Anders"
    assert grant.refresh_absolute_expires_at == datetime.combine(
        date.fromisoformat(made["expires_on"]), datetime.min.time(), tzinfo=UTC
    )
    assert grant.next_refresh_at is None and not grant.has_secret("refresh_token")
    assert grant.unseal("api_token") == made["api_token"]
    # Sealed and bound to this row: the database holds no token, and a copy elsewhere fails.
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM broker_grant")
        assert made["api_token"] not in repr(cursor.fetchall())
    [stored] = AuditEvent.objects.filter(action="grant.api_token_stored")
    assert (stored.actor_type, stored.actor, stored.grant_id) == ("user", "alice", grant.pk)
    assert stored.detail["expires_on"] == made["expires_on"]
    assert made["api_token"] not in repr(list(AuditEvent.objects.values()))

    # The header the proxy will send is accepted by the provider.
    me = requests.get(
        f"{sandbox.url}/rest/api/3/myself",
        headers={"Authorization": basic_authorization(grant)},
        timeout=TIMEOUT,
    )
    assert me.status_code == 200 and me.json()["accountId"] == "sandbox-alice"

    listed = alice_browser.get(f"{form_url.rsplit('/connections/', 1)[0]}/connections/")
    assert f'data-grant="{grant.pk}"' in listed.text and made["api_token"] not in listed.text
    assert f"<dt>API token expires</dt><dd>{made['expires_on']}</dd>" in listed.text


def test_the_connect_button_leads_to_the_api_token_form(alice_browser, live_server):
    listed = alice_browser.get(f"{live_server.url}/connections/", timeout=TIMEOUT)
    assert f'data-provider="{SLUG}"' in listed.text
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', listed.text)
    assert token
    response = alice_browser.post(
        f"{live_server.url}/connect/{SLUG}",
        data={"csrfmiddlewaretoken": token.group(1)},
        allow_redirects=False,
        timeout=TIMEOUT,
    )
    assert response.status_code == 302
    assert response.headers["Location"] == f"/connections/api-token/{SLUG}"


@pytest.mark.parametrize(
    "expires_on, message",
    [
        (lambda: today(), "already expired"),
        (lambda: today() - timedelta(days=3), "already expired"),
        (lambda: today() + timedelta(days=366), "within a year"),
        (lambda: today() + timedelta(days=3650), "within a year"),
    ],
    ids=["today", "past", "a-year-and-a-day", "ten-years"],
)
def test_an_expiry_date_past_or_beyond_a_year_is_refused_and_nothing_asked_or_stored(
    alice_browser, form_url, sandbox, owner, expires_on, message
):
    made = sandbox.api_token("alice")
    sandbox.reset_counters()
    response = csrf_post(
        alice_browser,
        form_url,
        {
            "email": made["email"],
            "api_token": made["api_token"],
            "expires_on": f"{expires_on():%Y-%m-%d}",
        },
    )
    assert response.status_code == 400 and message in response.text
    assert made["api_token"] not in response.text  # the password field is not rendered back
    assert basic_calls(sandbox) == 0
    assert not Grant.objects.filter(provider_app__slug=SLUG).exists()


def test_a_token_the_provider_refuses_is_a_form_error_and_stores_nothing(
    alice_browser, form_url, sandbox, owner
):
    made = sandbox.api_token("alice")
    sandbox.reset_counters()
    response = csrf_post(
        alice_browser,
        form_url,
        {
            "email": made["email"],
            "api_token": made["api_token"] + "x",
            "expires_on": made["expires_on"],
        },
    )
    assert (
        response.status_code == 400 and "did not accept this email and API token" in response.text
    )
    assert basic_calls(sandbox) == 1
    assert not Grant.objects.filter(provider_app__slug=SLUG).exists()
    [refused] = AuditEvent.objects.filter(action="grant.api_token_refused")
    assert refused.outcome == "denied" and made["api_token"] not in repr(refused.detail)


def test_a_new_token_replaces_the_old_one_in_the_same_grant_and_revives_it(
    alice_browser, form_url, sandbox, owner
):
    first = sandbox.api_token("alice", days=10)
    fields = {"email": first["email"], "api_token": first["api_token"]}
    assert csrf_post(alice_browser, form_url, {**fields, "expires_on": first["expires_on"]}).ok
    grant = Grant.objects.get(provider_app__slug=SLUG)
    Grant.objects.filter(pk=grant.pk).update(
        status="reconnect_required", api_token_sealed="", expiry_warning_sent_at=datetime.now(UTC)
    )

    second = sandbox.api_token("alice", days=300)
    fields = {"email": second["email"], "api_token": second["api_token"]}
    response = csrf_post(alice_browser, form_url, {**fields, "expires_on": second["expires_on"]})
    assert response.status_code == 302
    [renewed] = Grant.objects.filter(provider_app__slug=SLUG)
    assert renewed.pk == grant.pk and renewed.status == "active"
    assert renewed.unseal("api_token") == second["api_token"]
    assert renewed.expiry_warning_sent_at is None  # a new token, a new lifetime to warn about
    assert AuditEvent.objects.filter(action="grant.api_token_replaced").count() == 1


def test_the_form_needs_a_signed_in_user_and_an_api_token_app(
    live_server, sandbox_apps, broker_login, owner
):
    anonymous = requests.get(
        f"{live_server.url}/connections/api-token/{SLUG}", allow_redirects=False, timeout=TIMEOUT
    )
    assert anonymous.status_code == 302 and "/accounts/login/" in anonymous.headers["Location"]
    oauth_app = broker_login("alice", "alice-broker").get(
        f"{live_server.url}/connections/api-token/sandbox", timeout=TIMEOUT
    )
    assert oauth_app.status_code == 404


@pytest.fixture
def admin_browser(sandbox_apps, django_user_model, broker_login):
    django_user_model.objects.create_superuser("root", "root@example.com", "root-broker")
    return broker_login("root", "root-broker")


def test_an_admin_stores_an_api_token_for_a_user(
    admin_browser, live_server, sandbox, sandbox_apps, owner
):
    made = sandbox.api_token("alice", days=30)
    response = csrf_post(
        admin_browser,
        f"{live_server.url}/admin/broker/grant/add/",
        {
            "user": str(owner.pk),
            "provider_app": str(sandbox_apps[SLUG].pk),
            "email": made["email"],
            "api_token": made["api_token"],
            "expires_on": made["expires_on"],
        },
    )
    assert response.status_code == 302, response.text
    grant = Grant.objects.get(user=owner, provider_app__slug=SLUG)
    assert grant.unseal("api_token") == made["api_token"]
    [stored] = AuditEvent.objects.filter(action="grant.api_token_stored")
    assert (stored.actor_type, stored.actor, stored.subject_user) == ("admin", "root", "alice")
    page = admin_browser.get(f"{live_server.url}/admin/broker/grant/{grant.pk}/change/")
    assert page.status_code == 200 and made["api_token"] not in page.text


def test_the_admin_form_refuses_a_date_beyond_a_year_and_an_auditor_cannot_add(
    admin_browser, live_server, sandbox, sandbox_apps, owner, django_user_model, broker_login
):
    made = sandbox.api_token("alice", days=30)
    response = csrf_post(
        admin_browser,
        f"{live_server.url}/admin/broker/grant/add/",
        {
            "user": str(owner.pk),
            "provider_app": str(sandbox_apps[SLUG].pk),
            "email": made["email"],
            "api_token": made["api_token"],
            "expires_on": f"{today() + timedelta(days=400):%Y-%m-%d}",
        },
    )
    assert response.status_code == 400 and "within a year" in response.text
    assert not Grant.objects.filter(provider_app__slug=SLUG).exists()

    auditor = django_user_model.objects.create_user("audrey", "a@example.com", "audrey-broker")
    auditor.is_staff = True
    auditor.save()
    auditor.groups.add(Group.objects.get(name=AUDITOR_GROUP))
    page = broker_login("audrey", "audrey-broker").get(
        f"{live_server.url}/admin/broker/grant/add/", timeout=TIMEOUT
    )
    assert page.status_code == 403


def test_disconnecting_deletes_the_token(alice_browser, form_url, sandbox, owner, live_server):
    made = sandbox.api_token("alice")
    fields = {"email": made["email"], "api_token": made["api_token"]}
    assert csrf_post(alice_browser, form_url, {**fields, "expires_on": made["expires_on"]}).ok
    grant = Grant.objects.get(provider_app__slug=SLUG)
    response = csrf_post(alice_browser, f"{live_server.url}/connections/{grant.pk}/disconnect", {})
    assert response.status_code == 302
    revoked = Grant.objects.get(pk=grant.pk)
    assert revoked.status == "revoked" and not revoked.has_secret("api_token")
