"""A person in a real browser connects the sandbox's Jira Data Center (OAuth 1.0a)."""

import re

import pytest

from broker.models import AuditEvent, Grant, PendingAuthorization

pytestmark = [pytest.mark.browser, pytest.mark.sandbox]


def sign_in_and_connect(page, broker_url: str, slug: str) -> None:
    page.goto(f"{broker_url}/accounts/login/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", "alice-broker")
    page.click("button:has-text('Sign in')")
    page.wait_for_url(f"{broker_url}/connections/")
    page.click(f'form[data-provider="{slug}"] button')
    # The sandbox (on localhost, not 127.0.0.1) asks its own user to sign in.
    page.wait_for_url(re.compile(r"http://localhost:\d+/accounts/login/"))
    page.fill("#id_username", "alice")
    page.fill("#id_password", "alice-sandbox")
    page.click("button:has-text('Sign in')")
    page.wait_for_url(re.compile(r"/plugins/servlet/oauth/authorize\?"))


def test_a_new_user_connects_jira_in_the_browser(
    browser_page, owner, sandbox_providers, live_server
):
    page = browser_page
    sign_in_and_connect(page, live_server.url, "sandbox-jira")
    page.click("button:has-text('Allow')")
    page.wait_for_url(f"{live_server.url}/connections/")

    grant = Grant.objects.get()
    card = page.locator(f'[data-grant="{grant.id}"]')
    assert card.get_attribute("data-status") == "active"
    assert "Alice Anders" in card.inner_text()
    assert grant.user == owner and grant.provider_app.slug == "sandbox-jira"


def test_denying_in_the_browser_shows_a_clear_page(
    browser_page, owner, sandbox_providers, live_server
):
    page = browser_page
    sign_in_and_connect(page, live_server.url, "sandbox-jira")
    page.click("button:has-text('Deny')")
    page.wait_for_url(re.compile(rf"{re.escape(live_server.url)}/oauth1/callback/sandbox-jira\?"))
    assert page.locator("h1").inner_text() == "You declined access"
    assert "Nothing was stored" in page.locator("[role=alert]").inner_text()
    assert not Grant.objects.exists()
    assert PendingAuthorization.objects.get().consumed_at is not None
    assert AuditEvent.objects.filter(action="grant.consent_failed", outcome="denied").count() == 1
