"""Single sign-on against the sandbox as the OpenID Connect IdP, over real HTTP: the
broker's groups and admin rights follow the IdP's at every sign-in, and password sign-in
can be switched off."""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from django.contrib.auth.models import Group
from django.contrib.sessions.models import Session

from accounts.models import ExternalIdentity, User
from broker.admin.roles import AUDITOR_GROUP
from broker.models import AuditEvent
from tests.consent_driver import TIMEOUT, sign_in_to_sandbox
from tests.scim.conftest import ScimClient, create_token

pytestmark = [pytest.mark.sandbox, pytest.mark.django_db(transaction=True)]


def sso_sign_in(live_server, sandbox, username: str) -> requests.Session:
    """A browser that signs in to the sandbox, then presses the broker's SSO button."""
    session = requests.Session()
    sign_in_to_sandbox(session, sandbox.url, username)
    to_idp = session.get(f"{live_server.url}/accounts/oidc/login", allow_redirects=False)
    assert to_idp.status_code == 302 and to_idp.headers["Location"].startswith(sandbox.url)
    back = session.get(to_idp.headers["Location"], allow_redirects=False, timeout=TIMEOUT)
    callback = back.headers["Location"]
    assert callback.startswith(f"{live_server.url}/accounts/oidc/callback?"), callback
    done = session.get(callback, allow_redirects=False, timeout=TIMEOUT)
    assert done.status_code == 302 and done.headers["Location"] == "/connections/", done.text
    return session


def groups_of(username: str) -> list[str]:
    return sorted(Group.objects.filter(user__username=username).values_list("name", flat=True))


def test_group_sync_adds_and_removes_admin_and_auditor_rights(sandbox_sso, live_server):
    sandbox_sso.set_groups("alice", ["engineering", "broker-admins", "broker-auditors"])
    with sso_sign_in(live_server, sandbox_sso, "alice") as session:
        alice = User.objects.get(username="alice")
        assert alice.is_staff and alice.is_superuser
        assert groups_of("alice") == [
            AUDITOR_GROUP,
            "broker-admins",
            "broker-auditors",
            "engineering",
        ]
        assert session.get(f"{live_server.url}/admin/", timeout=TIMEOUT).status_code == 200
        identity = ExternalIdentity.objects.get(user=alice)
        assert identity.issuer == sandbox_sso.url and identity.subject

    sandbox_sso.set_groups("alice", ["support"])  # she left both groups at the IdP
    with sso_sign_in(live_server, sandbox_sso, "alice") as session:
        alice.refresh_from_db()
        assert not alice.is_staff and not alice.is_superuser
        assert groups_of("alice") == ["support"]
        admin = session.get(f"{live_server.url}/admin/", allow_redirects=False, timeout=TIMEOUT)
        assert admin.status_code == 302 and "/admin/login/" in admin.headers["Location"]
    assert ExternalIdentity.objects.count() == 1 and User.objects.count() == 1


CSRF_TOKEN = "c" * 32


def test_without_password_login_there_is_no_password_form_and_posts_are_refused(
    sandbox_sso, live_server, settings, django_user_model
):
    settings.BROKER_PASSWORD_LOGIN = False
    django_user_model.objects.create_user("root", password="root-password", is_superuser=True)
    with requests.Session() as browser:
        page = browser.get(f"{live_server.url}/accounts/login/", timeout=TIMEOUT)
        assert 'data-sso="oidc"' in page.text and "Sign in with Sandbox SSO" in page.text
        assert 'type="password"' not in page.text
        # Nor the admin's (issue 25 item 10), and both refuse posts. No page has a form that
        # sets the CSRF cookie any more: a scripted client makes its own (a valid one).
        browser.cookies.set("csrftoken", CSRF_TOKEN)
        admin_page = browser.get(f"{live_server.url}/admin/login/", timeout=TIMEOUT)
        assert (
            'data-sso="oidc"' in admin_page.text and "Sign in with Sandbox SSO" in admin_page.text
        )
        assert 'type="password"' not in admin_page.text and "login-form" not in admin_page.text
        for path, status, text in (
            ("/admin/login/", 403, "Password sign-in is off"),
            ("/accounts/login/", 403, "Password sign-in is off"),
        ):
            refused = browser.post(
                f"{live_server.url}{path}",
                data={
                    "username": "root",
                    "password": "root-password",
                    "csrfmiddlewaretoken": CSRF_TOKEN,
                },
                allow_redirects=False,
                timeout=TIMEOUT,
            )
            assert (refused.status_code, text in refused.text) == (status, True), path
            assert "sessionid" not in browser.cookies
            assert "_auth_user_id" not in json.dumps(
                [session.get_decoded() for session in Session.objects.all()]
            )
    with sso_sign_in(live_server, sandbox_sso, "carol"):  # single sign-on still works
        assert User.objects.get(username="carol").is_superuser


JWT = re.compile(r"eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+")


def test_no_session_row_holds_an_id_token_after_single_sign_on(sandbox_sso, live_server):
    """Issue 25 item 5: sessions live in the database (django_session); the user's ID token
    must not sit there, where a database or backup reader would find it."""
    with sso_sign_in(live_server, sandbox_sso, "alice"):
        sessions = [json.dumps(session.get_decoded()) for session in Session.objects.all()]
    alice = User.objects.get(username="alice")
    assert any(f'"_auth_user_id": "{alice.pk}"' in text for text in sessions), sessions
    assert [JWT.findall(text) for text in sessions] == [[] for _ in sessions]
    assert not any("id_token" in text for text in sessions)


def test_sign_out_ends_the_idp_session_naming_the_brokers_client(sandbox_sso, live_server):
    """RP-initiated logout with `client_id` and `post_logout_redirect_uri`, no ID token: the
    IdP asks the person to confirm, then its session is over."""
    with sso_sign_in(live_server, sandbox_sso, "alice") as browser:
        browser.get(f"{live_server.url}/connections/", timeout=TIMEOUT)  # the CSRF cookie
        out = browser.post(
            f"{live_server.url}/accounts/logout/",
            data={"csrfmiddlewaretoken": browser.cookies["csrftoken"]},
            allow_redirects=False,
            timeout=TIMEOUT,
        )
        end_session = urlsplit(out.headers["Location"])
        assert f"{end_session.scheme}://{end_session.netloc}" == sandbox_sso.url
        query = parse_qs(end_session.query)
        assert "id_token_hint" not in query
        assert (query["client_id"], query["post_logout_redirect_uri"]) == (
            ["broker-sso"],
            [f"{live_server.url}/accounts/login/"],
        )
        assert not any("_auth_user_id" in s.get_decoded() for s in Session.objects.all())
        confirm = browser.get(out.headers["Location"], timeout=TIMEOUT)
        assert confirm.status_code == 200 and "Sign out of the sandbox too?" in confirm.text
        done = browser.post(
            out.headers["Location"],
            data={
                "csrfmiddlewaretoken": browser.cookies["sandbox_csrftoken"],
                "client_id": "broker-sso",
                "post_logout_redirect_uri": f"{live_server.url}/accounts/login/",
                "state": query["state"][0],
                "allow": "Logout",
            },
            allow_redirects=False,
            timeout=TIMEOUT,
        )
        back = done.headers["Location"]
        assert back.startswith(f"{live_server.url}/accounts/login/?state="), done.text
        # Signed out at the IdP: single sign-on asks for the sandbox password again.
        to_idp = browser.get(
            f"{live_server.url}/accounts/oidc/login", allow_redirects=False, timeout=TIMEOUT
        )
        at_idp = browser.get(to_idp.headers["Location"], allow_redirects=False, timeout=TIMEOUT)
        assert at_idp.headers["Location"].startswith("/accounts/login/"), at_idp.headers


def test_an_sso_admin_signs_in_to_the_admin_from_its_sign_in_page(sandbox_sso, live_server):
    """Issue 25 item 10: /admin/login/ offers single sign-on, which comes back to the admin;
    with password sign-in on, the password form stays beside it."""
    with requests.Session() as browser:
        sign_in_to_sandbox(browser, sandbox_sso.url, "carol")
        to_login = browser.get(f"{live_server.url}/admin/", allow_redirects=False, timeout=TIMEOUT)
        assert to_login.headers["Location"] == "/admin/login/?next=/admin/"
        page = browser.get(f"{live_server.url}/admin/login/?next=/admin/", timeout=TIMEOUT)
        assert 'data-sso="oidc"' in page.text and "Sign in with Sandbox SSO" in page.text
        assert 'action="/accounts/oidc/login"' in page.text
        assert '<input type="hidden" name="next" value="/admin/">' in page.text
        assert 'type="password"' in page.text  # BROKER_PASSWORD_LOGIN is on
        to_idp = browser.get(
            f"{live_server.url}/accounts/oidc/login",
            params={"next": "/admin/"},
            allow_redirects=False,
            timeout=TIMEOUT,
        )
        back = browser.get(to_idp.headers["Location"], allow_redirects=False, timeout=TIMEOUT)
        done = browser.get(back.headers["Location"], allow_redirects=False, timeout=TIMEOUT)
        assert done.headers["Location"] == "/admin/", done.text
        index = browser.get(f"{live_server.url}/admin/", timeout=TIMEOUT)
        assert index.status_code == 200 and "Site administration" in index.text
    assert User.objects.get(username="carol").is_superuser


# -- users provisioned by SCIM ----------------------------------------------------------------


def scim_provision(username: str, active: bool = True) -> None:
    created = ScimClient(create_token("okta")).post(
        "/Users",
        {
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": username,
            "externalId": f"00u-{username}",
            "active": active,
        },
    )
    assert created.status_code == 201, created.content


def test_sso_links_to_the_user_scim_created_by_username(sandbox_sso, live_server):
    scim_provision("alice")
    provisioned = User.objects.get(username="alice")
    with sso_sign_in(live_server, sandbox_sso, "alice"):
        pass
    identity = ExternalIdentity.objects.get()
    assert identity.user_id == provisioned.pk and identity.issuer == sandbox_sso.url
    assert User.objects.count() == 1
    assert AuditEvent.objects.filter(action="scim.user_linked", subject_user="alice").count() == 1
    with sso_sign_in(live_server, sandbox_sso, "alice"):  # later sign-ins: by (issuer, sub)
        pass
    assert ExternalIdentity.objects.count() == 1 and User.objects.count() == 1


def refused_sign_in(live_server, sandbox, username: str) -> requests.Response:
    session = requests.Session()
    sign_in_to_sandbox(session, sandbox.url, username)
    to_idp = session.get(f"{live_server.url}/accounts/oidc/login", allow_redirects=False)
    back = session.get(to_idp.headers["Location"], allow_redirects=False, timeout=TIMEOUT)
    return session.get(back.headers["Location"], allow_redirects=False, timeout=TIMEOUT)


def test_sso_never_links_to_an_account_scim_did_not_make(
    sandbox_sso, live_server, django_user_model
):
    django_user_model.objects.create_user("alice", password="local-alice-1")
    refused = refused_sign_in(live_server, sandbox_sso, "alice")
    assert refused.status_code == 400 and "This user name is taken" in refused.text
    assert not ExternalIdentity.objects.exists()


def test_sso_does_not_link_or_reactivate_a_deactivated_scim_user(sandbox_sso, live_server):
    scim_provision("alice", active=False)
    refused = refused_sign_in(live_server, sandbox_sso, "alice")
    assert refused.status_code == 400 and "deactivated" in refused.text
    assert not ExternalIdentity.objects.exists()
    assert not User.objects.get(username="alice").is_active
    assert not AuditEvent.objects.filter(action="scim.user_linked").exists()
