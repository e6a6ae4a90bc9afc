"""End to end in headless Chromium: a new user connects the sandbox provider, sees the
grant with both sites, and disconnects it (gone at the provider too)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from broker.models import Grant

pytestmark = [
    pytest.mark.browser,
    pytest.mark.sandbox,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]

PHONE = {"width": 375, "height": 740}


def sign_in(page, url: str, username: str, password: str) -> None:
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def test_a_new_user_connects_the_sandbox_and_disconnects_it(
    page, sandbox_apps, owner, sandbox, live_server, eager_celery
):
    sandbox.revoke_user("alice")  # tokens left at the provider by earlier tests
    page.goto(f"{live_server.url}/connections/")
    sign_in(page, live_server.url, "alice", "alice-broker")
    expect(page.get_by_role("heading", name="My connections")).to_be_visible()
    expect(page.get_by_text("You have not connected any account yet.")).to_be_visible()

    page.locator('form[data-provider="sandbox"] button').click()
    expect(page).to_have_url(re.compile(r"^http://localhost:\d+/accounts/login/"))
    sign_in(page, sandbox.url, "alice", "alice-sandbox")
    page.get_by_role("button", name="Allow").click()

    expect(page).to_have_url(f"{live_server.url}/connections/")
    expect(page.get_by_role("status")).to_contain_text("Sandbox Cloud is connected")
    row = page.locator("[data-grant]")
    expect(row).to_have_count(1)
    expect(row).to_have_attribute("data-status", "active")
    expect(row).to_contain_text("Alice Anders")
    expect(row).to_contain_text("Acme Jira")
    expect(row).to_contain_text("Globex Confluence")
    grant = Grant.objects.get()
    assert row.get_attribute("data-grant") == str(grant.id)
    for site in grant.resources:
        expect(row).to_contain_text(site["id"])
    assert sandbox.tokens("alice")["oauth2_refresh_tokens"] == 1

    row.get_by_role("link", name=re.compile("Disconnect")).click()
    expect(page.get_by_role("heading", name="Disconnect Sandbox Cloud?")).to_be_visible()
    page.get_by_role("button", name="Disconnect").click()

    expect(page).to_have_url(f"{live_server.url}/connections/")
    expect(page.locator("[data-grant]")).to_have_count(0)
    grant.refresh_from_db()
    assert grant.status == Grant.Status.REVOKED
    assert not grant.access_token_sealed and not grant.refresh_token_sealed
    tokens = sandbox.tokens("alice")
    assert tokens["oauth2_access_tokens"] == 0 and tokens["oauth2_refresh_tokens"] == 0


def test_my_connections_fits_a_phone_screen(page, sandbox_apps, owner, live_server):
    grant = Grant(
        user=owner,
        provider_app=sandbox_apps["sandbox"],
        external_account_id="sandbox-alice",
        account_name="Alice Anders",
        scopes=["read:me", "read:jira-work", "offline_access"],
        resources=[
            {
                "id": "6f1c2a0e-5b7d-4c1e-9a4f-0d3e8b7a1c01",
                "url": "https://a-rather-long-site-name-for-a-phone.atlassian.net",
                "name": "Acme Jira",
                "scopes": [],
            }
        ],
    )
    grant.save()
    page.set_viewport_size(PHONE)
    page.goto(f"{live_server.url}/connections/")
    sign_in(page, live_server.url, "alice", "alice-broker")
    expect(page.locator('form[data-provider="sandbox-dc"] button')).to_be_visible()
    expect(page.locator(f'[data-grant="{grant.id}"]')).to_contain_text("Acme Jira")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    assert page.evaluate("document.querySelector('meta[name=viewport]') !== null")
