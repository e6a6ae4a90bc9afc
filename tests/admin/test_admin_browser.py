"""The admin's grants list in headless Chromium at 1400 px: every column visible, short
rows, and a neutral "reconnect" column; no page asks for a missing favicon."""

from __future__ import annotations

from datetime import timedelta

import pytest
import requests
from django.utils import timezone

from tests.factories import make_app, make_service, save_grant

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def long_named_grants(django_user_model):
    """Grants with the long names real deployments have: e-mail user names, an app named
    "Jira Data Center (Acme Corporation)", service client ids with a suffix."""
    app = make_app("jira-acme-datacenter", name="Jira Data Center (Acme Corporation)")
    service = make_service("reporting-service-5e6f7a8b", app=app)
    now = timezone.now()
    for n, days_left in enumerate((5, 300)):
        user = django_user_model.objects.create_user(f"firstname.lastname{n}@example.com")
        grant = save_grant(
            user,
            app,
            n,
            access_expires_at=now + timedelta(minutes=50),
            next_refresh_at=now + timedelta(minutes=40),
            last_used_at=now,
            last_used_by=service,
            refresh_absolute_expires_at=now + timedelta(days=days_left),
        )
        grant.account_name = f"Alexandra Example-Longname {n}"
        grant.save()


@pytest.mark.browser
def test_the_grants_list_fits_1400_px_with_short_rows(
    page, live_server, long_named_grants, django_user_model
):
    django_user_model.objects.create_superuser("root", "root@example.com", "root-broker")
    page.set_viewport_size({"width": 1400, "height": 800})
    not_found: list[str] = []
    page.on("response", lambda r: not_found.append(r.url) if r.status == 404 else None)
    page.goto(f"{live_server.url}/admin/login/?next=/admin/broker/grant/")
    page.fill("#id_username", "root")
    page.fill("#id_password", "root-broker")
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/broker/grant/")

    results = page.locator("div.results")
    overflow = results.evaluate("el => el.scrollWidth - el.clientWidth")
    assert overflow <= 4, f"the list is {overflow} px wider than its box"  # 4: borders
    right_edge = results.evaluate("el => el.getBoundingClientRect().right")
    for header in page.locator("#result_list thead th").all():
        assert header.evaluate("el => el.getBoundingClientRect().right") <= right_edge + 4
    line_height = 16
    for cell in page.locator("#result_list td.field-account").all():
        assert cell.bounding_box()["height"] < 4 * line_height
    reconnect = page.locator("#result_list td.field-reconnect_soon")
    assert sorted(reconnect.all_inner_texts()) == ["-", "soon"]
    assert reconnect.locator("img").count() == 0  # no red cross for "not soon"
    assert not_found == []


def test_pages_link_a_favicon_and_favicon_ico_is_no_404(client, live_server, owner):
    assert client.get("/favicon.ico").status_code == 204
    client.force_login(owner)
    for path in ("/connections/", "/admin/login/"):
        html = client.get(path, follow=True).content.decode()
        assert '<link rel="icon" href="/static/broker/favicon.svg"' in html, path
    icon = requests.get(f"{live_server.url}/static/broker/favicon.svg", timeout=10)
    assert icon.status_code == 200 and icon.text.startswith("<svg")
