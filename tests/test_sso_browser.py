"""End to end in headless Chromium: a newcomer signs in with single sign-on at the sandbox
IdP, lands on My connections, and signing out ends the IdP's session too."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from accounts.models import ExternalIdentity, User

pytestmark = [
    pytest.mark.browser,
    pytest.mark.sandbox,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]


def test_a_newcomer_signs_in_with_single_sign_on_and_out_again(page, sandbox_sso, live_server):
    page.goto(f"{live_server.url}/connections/")
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next=/connections/$"))
    page.locator('[data-sso="oidc"] button').click()

    expect(page).to_have_url(re.compile(rf"^{re.escape(sandbox_sso.url)}/accounts/login/"))
    page.get_by_label("Username").fill("carol")
    page.get_by_label("Password").fill("carol-sandbox")
    page.get_by_role("button", name="Sign in").click()

    expect(page).to_have_url(f"{live_server.url}/connections/")
    expect(page.get_by_role("heading", name="My connections")).to_be_visible()
    carol = User.objects.get(username="carol")
    assert carol.is_superuser and ExternalIdentity.objects.filter(user=carol).exists()

    page.get_by_role("button", name="Sign out").click()
    # The broker keeps no ID token to hint with, so the IdP asks before ending its session.
    expect(page).to_have_url(re.compile(rf"^{re.escape(sandbox_sso.url)}/oidc/logout\?"))
    expect(page.get_by_role("heading", name="Sign out of the sandbox too?")).to_be_visible()
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(rf"^{re.escape(live_server.url)}/accounts/login/"))
    # Signed out at the IdP too: the button asks for the sandbox password again.
    page.locator('[data-sso="oidc"] button').click()
    expect(page).to_have_url(re.compile(rf"^{re.escape(sandbox_sso.url)}/accounts/login/"))


def test_an_sso_admin_signs_in_to_the_admin_with_single_sign_on(page, sandbox_sso, live_server):
    """Issue 25 item 10: carol, an admin at the IdP, opens /admin/ and gets in by its
    sign-in page's single sign-on button."""
    page.goto(f"{live_server.url}/admin/")
    expect(page).to_have_url(re.compile(r"/admin/login/\?next=/admin/$"))
    page.locator('[data-sso="oidc"] button').click()

    expect(page).to_have_url(re.compile(rf"^{re.escape(sandbox_sso.url)}/accounts/login/"))
    page.get_by_label("Username").fill("carol")
    page.get_by_label("Password").fill("carol-sandbox")
    page.get_by_role("button", name="Sign in").click()

    expect(page).to_have_url(f"{live_server.url}/admin/")
    expect(page.get_by_role("heading", name="Site administration")).to_be_visible()
    assert User.objects.get(username="carol").is_superuser
