"""The admin in headless Chromium: the grants list at 1400 px (every column visible, short
rows, a neutral "reconnect" column), the audit list at 1280 px, the read-only grant page
and the revoke confirmation at desktop and phone width (screenshots: tests/screenshots.py);
no page asks for a missing favicon."""

from __future__ import annotations

from datetime import timedelta

import pytest
import requests
from django.utils import timezone

from broker.audit import trail
from broker.models import AuditEvent, Grant, ServiceClient
from tests.factories import make_app, make_service, save_grant
from tests.screenshots import (
    DESKTOP,
    PHONE,
    at_each_width,
    horizontal_overflow,
    screenshot_dir,
    sign_in_browser,
)

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


@pytest.mark.browser
def test_a_grants_page_is_read_only_and_fits_a_phone(
    page, live_server, long_named_grants, django_user_model, tmp_path
):
    root = django_user_model.objects.create_superuser("root", "root@example.com", "root-broker")
    grant = Grant.objects.order_by("account_name").first()
    sign_in_browser(page, live_server, root)
    folder = screenshot_dir(tmp_path)
    change = f"{live_server.url}/admin/broker/grant/{grant.pk}/change/"
    for width in at_each_width(page, change, "admin-grant", folder):
        assert page.locator("#grant_form, #content-main").count() >= 1
        for button in ("_save", "_continue", "_addanother"):
            assert page.locator(f'[name="{button}"]').count() == 0, (width, button)
        assert horizontal_overflow(page) <= 0, width

    changelist = f"{live_server.url}/admin/broker/grant/"
    for width in at_each_width(page, changelist, "admin-grants", folder):
        assert page.locator("#result_list tbody tr").count() == 2
        assert horizontal_overflow(page) <= 0, width

    page.set_viewport_size(PHONE)
    page.goto(changelist)
    for box in page.locator("#result_list tbody input.action-select").all():
        box.check()
    page.select_option("select[name=action]", "revoke_selected")
    page.locator("button[name=index]").click()
    page.wait_for_selector("input[name=reason]")
    for width, viewport in (("phone", PHONE), ("desktop", DESKTOP)):
        page.set_viewport_size(viewport)
        assert horizontal_overflow(page) <= 0, width
        page.screenshot(path=str(folder / f"admin-revoke-{width}.png"), full_page=True)
    assert Grant.objects.filter(status=Grant.Status.REVOKED).count() == 0  # only asked


def test_posting_a_grants_page_changes_and_logs_nothing(client, django_user_model, owner):
    root = django_user_model.objects.create_superuser("root", "root@example.com", "root-broker")
    grant = save_grant(owner, make_app())
    client.force_login(root)
    url = f"/admin/broker/grant/{grant.pk}/change/"
    assert 'name="_save"' not in client.get(url).content.decode()
    before = Grant.objects.filter(pk=grant.pk).values().get()
    response = client.post(url, {"status": "revoked", "_save": "Save"})
    assert response.status_code == 403
    assert Grant.objects.filter(pk=grant.pk).values().get() == before
    assert not AuditEvent.objects.filter(action="admin.change").exists()


@pytest.fixture
def audit_of_many_services(owner):
    """A day of audit events as a real deployment has them: services with long names and
    client ids, IPv6 client addresses, e-mail user names."""
    app = make_app("jira-acme-datacenter", name="Jira Data Center (Acme Corporation)")
    grant = save_grant(owner, app)
    services = [
        ServiceClient.objects.create(
            client_id=f"{name.lower().replace(' ', '-')}-5e6f7a8b", name=name
        )
        for name in ("Quarterly Reporting Service", "Release Notes Generator", "Chat Assistant")
    ]
    for n, service in enumerate(services):
        trail.record(
            ("token.issued", "request.signed", "proxy.forwarded")[n],
            actor_type="service",
            actor=service.client_id,
            grant_id=grant.pk,
            subject_user="firstname.lastname@example.com",
            provider=app.slug,
            service=service.client_id,
            scopes=["read:jira-work"],
        )
    return services


@pytest.mark.browser
def test_the_audit_list_names_services_and_fits_1280_px(
    page, live_server, audit_of_many_services, django_user_model, tmp_path
):
    AuditEvent.objects.update(client_ip="2001:db8:85a3:1234:5678:8a2e:370:7334")
    root = django_user_model.objects.create_superuser("root", "root@example.com", "root-broker")
    sign_in_browser(page, live_server, root)
    folder = screenshot_dir(tmp_path)
    url = f"{live_server.url}/admin/broker/auditevent/"
    for width in at_each_width(page, url, "admin-audit", folder):
        if width != "desktop":
            continue
        results = page.locator("div.results")
        overflow = results.evaluate("el => el.scrollWidth - el.clientWidth")
        assert overflow <= 4, f"the list is {overflow} px wider than its box"
        right_edge = min(
            results.evaluate("el => el.getBoundingClientRect().right"), DESKTOP["width"]
        )
        for header in page.locator("#result_list thead th").all():
            assert header.evaluate("el => el.getBoundingClientRect().right") <= right_edge + 4
        assert horizontal_overflow(page) <= 0
        cells = page.locator("#result_list td.field-service_cell")
        for service in audit_of_many_services:
            cell = cells.filter(has_text=service.name)
            assert cell.count() == 1, service.name
            assert service.client_id in cell.inner_text()
            assert cell.locator(f'[title="client id {service.client_id}"]').count() == 1
        ips = page.locator("#result_list td.field-client_address")
        assert ips.first.is_visible() and "2001:db8" in ips.first.inner_text()
