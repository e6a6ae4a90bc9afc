"""End to end in headless Chromium: a newcomer signs in with single sign-on at the sandbox
IdP, lands on My connections, and signing out ends the IdP's session too."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from accounts.models import ExternalIdentity, User
from tests.screenshots import at_each_width, horizontal_overflow, screenshot_dir

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


def test_the_sign_in_page_says_or_between_single_sign_on_and_the_password(
    page, sandbox_sso, live_server, tmp_path
):
    folder = screenshot_dir(tmp_path)
    url = f"{live_server.url}/accounts/login/"
    for width in at_each_width(page, url, "sign-in", folder):
        sso = page.locator('[data-sso="oidc"] button')
        separator = page.locator("p.separator")
        password = page.get_by_label("Password")
        expect(separator).to_have_text("or")
        # In that order, top to bottom: single sign-on, "or", the password form.
        tops = [el.bounding_box()["y"] for el in (sso, separator, password)]
        assert tops == sorted(tops), (width, tops)
        assert horizontal_overflow(page) <= 0, width
