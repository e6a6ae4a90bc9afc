"""Single sign-on against the sandbox as the OpenID Connect IdP, over real HTTP: the
broker's groups and admin rights follow the IdP's at every sign-in, and password sign-in
can be switched off."""

from __future__ import annotations

import pytest
import requests
from django.contrib.auth.models import Group

from accounts.models import ExternalIdentity, User
from broker.admin.roles import AUDITOR_GROUP
from tests.consent_driver import TIMEOUT, sign_in_to_sandbox

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


def test_without_password_login_there_is_no_password_form_and_posts_are_refused(
    sandbox_sso, live_server, settings, django_user_model
):
    settings.BROKER_PASSWORD_LOGIN = False
    django_user_model.objects.create_user("root", password="root-password", is_superuser=True)
    with requests.Session() as browser:
        page = browser.get(f"{live_server.url}/accounts/login/", timeout=TIMEOUT)
        assert 'data-sso="oidc"' in page.text and "Sign in with Sandbox SSO" in page.text
        assert 'type="password"' not in page.text
        # The admin's sign-in page sets the CSRF cookie; its form refuses the password too.
        for path, status, text in (
            ("/admin/login/", 200, "Please enter the correct username and password"),
            ("/accounts/login/", 403, "Password sign-in is off"),
        ):
            browser.get(f"{live_server.url}/admin/login/", timeout=TIMEOUT)
            refused = browser.post(
                f"{live_server.url}{path}",
                data={
                    "username": "root",
                    "password": "root-password",
                    "csrfmiddlewaretoken": browser.cookies["csrftoken"],
                },
                allow_redirects=False,
                timeout=TIMEOUT,
            )
            assert (refused.status_code, text in refused.text) == (status, True), path
            assert "sessionid" not in browser.cookies
    with sso_sign_in(live_server, sandbox_sso, "carol"):  # single sign-on still works
        assert User.objects.get(username="carol").is_superuser
