"""My connections: what each user sees, and who may disconnect what."""

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from broker.models import AuditEvent, Grant, ProviderApp
from tests.factories import save_grant


@pytest.fixture
def apps(db):
    cloud = ProviderApp.objects.create(
        slug="atlassian", kind="atlassian", name="Atlassian", client_id="c", scopes=["read:me"]
    )
    jira = ProviderApp.objects.create(
        slug="jira-acme",
        kind="jira-dc-oauth1",
        name="Jira (Acme)",
        base_url="https://jira.acme.example",
        client_id="broker",
    )
    ProviderApp.objects.create(
        slug="hidden", kind="atlassian", name="Disabled app", client_id="x", enabled=False
    )
    return {"atlassian": cloud, "jira-acme": jira}


def grant_with_sites(user, app, account="acct-1", **fields) -> Grant:
    """A saved grant with two Atlassian sites and known token strings (never on a page)."""
    return save_grant(
        user,
        app,
        external_account_id=account,
        account_name=f"Name of {account}",
        scopes=["read:me", "read:jira-work"],
        resources=[
            {"id": "cloud-1", "url": "https://one.example", "name": "Site One", "scopes": []},
            {"id": "cloud-2", "url": "https://two.example", "name": "Site Two", "scopes": []},
        ],
        access="secret-access-token",
        refresh="secret-refresh-token",
        **fields,
    )


def client_for(user, **options) -> Client:
    client = Client(**options)
    client.force_login(user)
    return client


def test_page_lists_own_live_grants_with_sites_and_connect_forms(apps, owner, outsider):
    mine = grant_with_sites(owner, apps["atlassian"])
    grant_with_sites(owner, apps["atlassian"], "acct-old", status=Grant.Status.REVOKED)
    theirs = grant_with_sites(outsider, apps["atlassian"], "acct-2")
    page = client_for(owner).get("/connections/").content.decode()

    assert f'data-grant="{mine.id}"' in page and 'data-status="active"' in page
    assert str(theirs.id) not in page and "acct-old" not in page
    for text in ("Site One", "https://one.example", "cloud-1", "Site Two", "cloud-2"):
        assert text in page
    assert "read:jira-work" in page and "Name of acct-1" in page
    assert 'data-provider="atlassian"' in page and 'data-provider="jira-acme"' in page
    assert 'data-provider="hidden"' not in page
    assert page.count('name="csrfmiddlewaretoken"') >= 3  # sign out, connects, reconnect
    assert "secret-access-token" not in page and "secret-refresh-token" not in page
    assert f'href="/connections/{mine.id}/disconnect"' in page


def test_an_app_the_user_is_connected_to_is_not_offered_again(apps, owner):
    grant_with_sites(owner, apps["atlassian"], status=Grant.Status.RECONNECT_REQUIRED)
    page = client_for(owner).get("/connections/").content.decode()
    connected, offered = page.split('id="connect-an-account"')
    assert 'data-provider="atlassian"' not in offered and "Atlassian" not in offered
    assert 'data-provider="jira-acme"' in offered
    assert 'data-action="reconnect" data-provider="atlassian"' in connected


def test_page_warns_before_the_refresh_token_lapses(apps, owner):
    soon = grant_with_sites(owner, apps["atlassian"])
    soon.refresh_absolute_expires_at = timezone.now() + timedelta(days=3)
    soon.save()
    assert "Reconnect soon" in client_for(owner).get("/connections/").content.decode()
    soon.refresh_absolute_expires_at = timezone.now() + timedelta(days=200)
    soon.save()
    assert "Reconnect soon" not in client_for(owner).get("/connections/").content.decode()


def test_page_says_when_reconnection_is_required(apps, owner):
    grant_with_sites(owner, apps["atlassian"], status=Grant.Status.RECONNECT_REQUIRED)
    page = client_for(owner).get("/connections/").content.decode()
    assert 'data-status="reconnect_required"' in page and "Reconnect to use it again" in page


def test_page_requires_sign_in(apps):
    response = Client().get("/connections/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_disconnect_asks_for_confirmation_first(apps, owner):
    grant = grant_with_sites(owner, apps["atlassian"])
    before = Grant.objects.filter(pk=grant.pk).values().get()
    response = client_for(owner).get(f"/connections/{grant.id}/disconnect")
    assert response.status_code == 200
    page = response.content.decode()
    assert "Disconnect Atlassian?" in page and 'method="post"' in page
    assert "https://id.atlassian.com/manage-profile/apps" in page
    assert Grant.objects.filter(pk=grant.pk).values().get() == before


def test_disconnect_revokes_and_wipes_the_grant(apps, owner):
    grant = grant_with_sites(owner, apps["atlassian"])
    response = client_for(owner).post(f"/connections/{grant.id}/disconnect")
    assert response.status_code == 302 and response["Location"] == "/connections/"
    grant.refresh_from_db()
    assert grant.status == Grant.Status.REVOKED
    assert grant.revoked_reason == "disconnected by user"
    assert not grant.access_token_sealed and not grant.refresh_token_sealed
    event = AuditEvent.objects.get(action="grant.disconnected")
    assert event.actor_type == "user" and event.actor == "alice" and event.grant_id == grant.id
    # Gone from the page, and a second POST finds nothing.
    assert str(grant.id) not in client_for(owner).get("/connections/").content.decode()
    assert client_for(owner).post(f"/connections/{grant.id}/disconnect").status_code == 404


def test_disconnect_without_csrf_token_is_refused(apps, owner):
    grant = grant_with_sites(owner, apps["atlassian"])
    before = Grant.objects.filter(pk=grant.pk).values().get()
    response = client_for(owner, enforce_csrf_checks=True).post(
        f"/connections/{grant.id}/disconnect"
    )
    assert response.status_code == 403
    assert Grant.objects.filter(pk=grant.pk).values().get() == before
    assert not AuditEvent.objects.exists()


@pytest.mark.parametrize("method", ["get", "post"])
def test_another_users_grant_is_not_found(apps, owner, outsider, method):
    grant = grant_with_sites(owner, apps["atlassian"])
    before = Grant.objects.filter(pk=grant.pk).values().get()
    response = getattr(client_for(outsider), method)(f"/connections/{grant.id}/disconnect")
    assert response.status_code == 404
    assert "Name of acct-1" not in response.content.decode()
    missing = getattr(client_for(outsider), method)(
        "/connections/00000000-0000-4000-8000-000000000000/disconnect"
    )
    assert missing.status_code == 404
    assert Grant.objects.filter(pk=grant.pk).values().get() == before
    assert not AuditEvent.objects.exists()


def test_oauth1_disconnect_page_says_where_to_revoke_in_jira(apps, owner):
    grant = grant_with_sites(owner, apps["jira-acme"])
    page = client_for(owner).get(f"/connections/{grant.id}/disconnect").content.decode()
    assert "https://jira.acme.example/plugins/servlet/oauth/users/access-tokens" in page


@pytest.mark.django_db
def test_expired_consent_state_is_purged_after_a_day(owner):
    from datetime import timedelta

    from django.utils import timezone

    from broker.consent.pending import purge_expired_consent_state
    from broker.models import PendingAuthorization, ProviderApp

    app = ProviderApp.objects.create(slug="purge", kind="atlassian", name="P", client_id="c")
    now = timezone.now()
    for state, expires in (("old", now - timedelta(days=2)), ("recent", now - timedelta(hours=1))):
        PendingAuthorization.objects.create(
            state=state, user=owner, session_digest="d", provider_app=app, expires_at=expires
        )
    assert purge_expired_consent_state() == 1
    assert list(PendingAuthorization.objects.values_list("state", flat=True)) == ["recent"]
