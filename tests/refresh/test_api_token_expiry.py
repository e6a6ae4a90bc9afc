"""API-token grants are never refreshed; once the token expires the beat ends the grant
(reconnect_required, token wiped, user and services told), once. The proxy's Basic auth
header refuses an unusable grant by itself, beat or not."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
from django.conf import settings
from django.core import mail
from django.db import connection
from django.utils import timezone

from broker.celery import app as celery_app
from broker.models import Grant, ProviderApp, WebhookDelivery
from broker.providers.api_token_auth import (
    ApiTokenUnusable,
    basic_authorization,
    basic_credentials,
)
from broker.refresh.api_token_expiry import end_expired_api_tokens, expire
from broker.refresh.claims import claim_due_grants, claim_now
from tests.factories import make_app, make_service, save_grant

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "bkw_test-webhook-secret-abc"


@pytest.fixture
def site(db) -> ProviderApp:
    return ProviderApp.objects.create(
        slug="acme-site",
        kind="atlassian-api-token",
        name="Acme Jira",
        base_url="https://acme.atlassian.net",
    )


def token_grant(owner, site, n: int, expires_in: timedelta | None, **fields) -> Grant:
    grant = Grant(
        user=owner,
        provider_app=site,
        external_account_id=f"acct-{n}",
        account_email="alice@example.com",
        refresh_absolute_expires_at=timezone.now() + expires_in if expires_in else None,
        **fields,
    )
    grant.seal("api_token", f"ATATT-token-{n}")
    grant.save()
    return grant


def test_an_expired_token_ends_its_grant_once_and_tells_user_and_services(
    owner, site, local_server, eager_celery
):
    make_service("scripts", webhook_url=f"{local_server.url}/hook", webhook_secret=SECRET, app=site)
    expired = token_grant(owner, site, 1, timedelta(minutes=-1))
    live = token_grant(owner, site, 2, timedelta(days=3))
    oauth_app = make_app("atlassian", kind="atlassian")
    # An OAuth grant past its refresh token's end is the refresh engine's business, not this.
    oauth = save_grant(owner, oauth_app, 3, refresh_absolute_expires_at=timezone.now())

    assert end_expired_api_tokens() == 1
    assert end_expired_api_tokens() == 0  # the next beat: nothing twice

    ended = Grant.objects.get(pk=expired.pk)
    assert ended.status == "reconnect_required" and not ended.has_secret("api_token")
    assert Grant.objects.get(pk=live.pk).status == "active"
    assert Grant.objects.get(pk=oauth.pk).status == "active"
    [hook] = local_server.requests
    body = json.loads(hook.body)
    assert body["event"] == "grant.reconnect_required" and body["grant"]["id"] == str(expired.pk)
    assert body["data"]["reason"] == "api_token_expired"
    [email] = mail.outbox
    assert email.subject == "Your Acme Jira API token has expired"
    assert "ATATT" not in email.body and "/connections/" in email.body


def test_two_beats_at_once_end_each_grant_once(owner, site):
    make_service("scripts", webhook_url="https://hooks.example/x", webhook_secret=SECRET, app=site)
    grants = [token_grant(owner, site, n, timedelta(seconds=-n - 1)) for n in range(12)]
    start = threading.Barrier(2)
    counts: list[int] = []

    def beat() -> None:
        start.wait()
        try:
            counts.append(end_expired_api_tokens())
        finally:
            connection.close()

    beats = [threading.Thread(target=beat) for _ in range(2)]
    for thread in beats:
        thread.start()
    for thread in beats:
        thread.join(timeout=60)
    assert sum(counts) == len(grants)
    told = WebhookDelivery.objects.filter(event="grant.reconnect_required")
    assert sorted(str(d.grant_id) for d in told) == sorted(str(g.pk) for g in grants)


def test_a_token_stored_meanwhile_is_not_ended(owner, site):
    grant = token_grant(owner, site, 1, timedelta(minutes=-1))
    now = timezone.now()
    # A new token arrived between the beat's query and its update: the update's own
    # condition (still expired) keeps the grant and its new token.
    Grant.objects.filter(pk=grant.pk).update(refresh_absolute_expires_at=now + timedelta(days=300))
    assert expire(str(grant.pk), now) is False
    kept = Grant.objects.get(pk=grant.pk)
    assert kept.status == "active" and kept.has_secret("api_token")


def test_the_refresh_engine_never_claims_an_api_token_grant(owner, site):
    grant = token_grant(owner, site, 1, timedelta(days=1))
    assert (
        claim_due_grants(on_claimed=lambda ids: None, now=timezone.now() + timedelta(days=400))
        == []
    )
    assert claim_now([str(grant.pk)], on_claimed=lambda ids: None) == []
    assert Grant.objects.get(pk=grant.pk).next_refresh_at is None


def test_the_beat_runs_the_expiry():
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert "broker.refresh.end_expired_api_tokens" in scheduled
    celery_app.loader.import_default_modules()
    assert "broker.refresh.end_expired_api_tokens" in celery_app.tasks


def test_the_basic_auth_header_is_the_email_and_token(owner, site):
    grant = token_grant(owner, site, 1, timedelta(days=30))
    header = basic_authorization(grant)
    assert header == basic_credentials("alice@example.com", "ATATT-token-1")
    assert header == "Basic YWxpY2VAZXhhbXBsZS5jb206QVRBVFQtdG9rZW4tMQ=="


@pytest.mark.parametrize(
    "state",
    [
        {"refresh_absolute_expires_at": timezone.now() - timedelta(seconds=1)},
        {"status": "reconnect_required"},
        {"status": "revoked"},
        {"api_token_sealed": ""},
    ],
    ids=["expired-before-the-beat", "reconnect-required", "revoked", "wiped"],
)
def test_an_unusable_grant_gives_no_header(owner, site, state):
    grant = token_grant(owner, site, 1, timedelta(days=30))
    Grant.objects.filter(pk=grant.pk).update(**state)
    with pytest.raises(ApiTokenUnusable) as refused:
        basic_authorization(Grant.objects.select_related("provider_app").get(pk=grant.pk))
    assert "ATATT" not in str(refused.value)


def test_an_oauth_grant_gives_no_basic_header(owner):
    grant = save_grant(owner, make_app("atlassian", kind="atlassian"), 1)
    with pytest.raises(ApiTokenUnusable):
        basic_authorization(grant)
