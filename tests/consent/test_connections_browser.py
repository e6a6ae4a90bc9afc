"""End to end in headless Chromium: a new user connects the sandbox provider, sees the
grant with both sites, and disconnects it (gone at the provider too)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from broker.models import Grant
from tests.screenshots import at_each_width, horizontal_overflow, screenshot_dir

pytestmark = [
    pytest.mark.browser,
    pytest.mark.sandbox,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]


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


def test_my_connections_fits_a_phone_screen(
    page, sandbox_apps, sandbox, owner, live_server, tmp_path
):
    """My connections, the Disconnect page and the message after it, at desktop and phone
    width: nothing scrolls sideways, a connected app is offered only as Reconnect, the
    Disconnect page links to the sandbox's own account page, and "is disconnected" looks
    like a success."""
    grant = Grant(
        user=owner,
        provider_app=sandbox_apps["sandbox"],
        external_account_id="sandbox-alice",
        account_name="Alice Anders",
        account_email="alice.anders-with-a-long-address@a-long-company-domain.example",
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
    folder = screenshot_dir(tmp_path)
    page.goto(f"{live_server.url}/connections/")
    sign_in(page, live_server.url, "alice", "alice-broker")
    offered = page.locator("#connect-an-account")
    for width in at_each_width(page, f"{live_server.url}/connections/", "connections", folder):
        expect(page.locator(f'[data-grant="{grant.id}"]')).to_contain_text("Acme Jira")
        expect(offered.locator('form[data-provider="sandbox-dc"] button')).to_be_visible()
        # Connected: reconnected from its card, not offered again.
        expect(offered.locator('form[data-provider="sandbox"]')).to_have_count(0)
        expect(offered).not_to_contain_text("Sandbox Cloud")
        reconnect = page.locator(f'[data-grant="{grant.id}"] form[data-action="reconnect"]')
        expect(reconnect).to_have_attribute("data-provider", "sandbox")
        assert horizontal_overflow(page) <= 0, width
    assert page.evaluate("document.querySelector('meta[name=viewport]') !== null")

    disconnect = f"{live_server.url}/connections/{grant.id}/disconnect"
    for width in at_each_width(page, disconnect, "disconnect", folder):
        account_page = page.locator('main a[href$="/manage-profile/apps"]')
        expect(account_page).to_have_attribute("href", f"{sandbox.url}/manage-profile/apps")
        expect(page.locator("main")).not_to_contain_text("id.atlassian.com")
        assert horizontal_overflow(page) <= 0, width

    page.get_by_role("button", name="Disconnect").click()
    message = page.get_by_role("status").locator("li.success")
    expect(message).to_contain_text("Sandbox Cloud is disconnected")
    background = message.evaluate("el => getComputedStyle(el).backgroundColor")
    assert background == "rgb(227, 252, 239)", background  # the success green, not white
    page.screenshot(path=str(folder / "disconnected-phone.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 800})
    page.screenshot(path=str(folder / "disconnected-desktop.png"), full_page=True)
    expect(offered.locator('form[data-provider="sandbox"] button')).to_be_visible()

    page.goto(f"{sandbox.url}/manage-profile/apps")  # the page the link leads to
    sign_in(page, sandbox.url, "alice", "alice-sandbox")
    expect(page.get_by_role("heading", name="Connected apps")).to_be_visible()


@pytest.mark.parametrize("path", ["/no-such-page", "/connections/not-a-grant/disconnect"])
def test_a_missing_page_is_the_sites_own_page(page, live_server, owner, path, tmp_path):
    folder = screenshot_dir(tmp_path)
    name = "404" + path.replace("/", "-")
    for width in at_each_width(page, f"{live_server.url}{path}", name, folder):
        expect(page.get_by_role("heading", name="This page does not exist")).to_be_visible()
        expect(page.get_by_role("link", name="Back to My connections")).to_be_visible()
        assert horizontal_overflow(page) <= 0, width


@pytest.mark.parametrize(
    ("path", "status", "heading"),
    [
        ("/_test/forbidden", 403, "You may not open this page"),
        ("/_test/broken", 500, "Something went wrong on our side"),
    ],
)
def test_refusals_and_failures_are_the_sites_own_pages(
    page, live_server, settings, path, status, heading, tmp_path
):
    settings.ROOT_URLCONF = "tests.error_page_urls"
    folder = screenshot_dir(tmp_path)
    statuses: list[int] = []
    page.on("response", lambda r: statuses.append(r.status) if path in r.url else None)
    for width in at_each_width(page, f"{live_server.url}{path}", str(status), folder):
        expect(page.get_by_role("heading", name=heading)).to_be_visible()
        expect(page.get_by_role("link", name="My connections")).to_be_visible()
        assert page.locator('link[rel="stylesheet"][href$="broker/site.css"]').count() == 1
        assert horizontal_overflow(page) <= 0, width
    assert statuses == [status, status]
