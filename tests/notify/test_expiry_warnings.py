"""Refresh tokens that die of age (Atlassian: 365 days after consent) and API tokens that
expire: the user and the subscribed services are told 14 days and 1 day ahead, once per
warning, grant and consent."""

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
from broker.consent.grant_store import store_consent
from broker.models import Grant, ProviderApp, WebhookDelivery
from broker.notify.expiry_warnings import warn_of_expiring_grants
from tests.factories import make_app, make_service, save_grant

SECRET = "bkw_test-webhook-secret-abc"

pytestmark = pytest.mark.django_db(transaction=True)


def expiring_in(days: float | None, owner, app, n: int, **kw) -> Grant:
    expires = timezone.now() + timedelta(days=days) if days is not None else None
    return save_grant(owner, app, n, refresh_absolute_expires_at=expires, **kw)


def test_users_and_services_are_told_once_two_weeks_before_the_refresh_token_dies(
    owner, local_server, eager_celery
):
    app = make_app("atlassian", kind="atlassian", name="Atlassian")
    make_service("reports", webhook_url=f"{local_server.url}/hook", webhook_secret=SECRET, app=app)
    soon = expiring_in(13, owner, app, 1)
    later = expiring_in(20, owner, app, 2)
    never = expiring_in(None, owner, app, 3)  # no absolute expiry (Data Center, generic)
    gone = expiring_in(-1, owner, app, 4)  # already dead: a warning would be a lie
    revoked = expiring_in(5, owner, app, 5, status=Grant.Status.REVOKED)

    assert warn_of_expiring_grants() == 1
    assert warn_of_expiring_grants() == 0  # the next beat: nothing twice

    [hook] = local_server.requests
    assert hook.headers["x-broker-event"] == "grant.expiring"
    body = json.loads(hook.body)
    assert body["grant"]["id"] == str(soon.pk)
    expires = soon.refresh_absolute_expires_at
    assert body["data"] == {
        "refresh_expires_at": expires.isoformat().replace("+00:00", "Z"),
        "final": False,
    }
    [email] = mail.outbox
    assert email.to == ["alice@example.com"]
    assert email.subject == f"Reconnect your Atlassian account before {expires:%Y-%m-%d}"
    assert "/connections/" in email.body and "refresh-" not in email.body
    assert Grant.objects.get(pk=soon.pk).expiry_warning_sent_at is not None
    for untold in (later, never, gone, revoked):
        assert Grant.objects.get(pk=untold.pk).expiry_warning_sent_at is None


def test_a_deactivated_user_is_warned_only_once_reactivated(owner, eager_celery):
    app = make_app("atlassian", kind="atlassian")
    grant = expiring_in(10, owner, app, 1)
    owner.is_active = False
    owner.save(update_fields=["is_active"])

    assert warn_of_expiring_grants() == 0
    assert mail.outbox == []
    assert Grant.objects.get(pk=grant.pk).expiry_warning_sent_at is None

    owner.is_active = True
    owner.save(update_fields=["is_active"])
    assert warn_of_expiring_grants() == 1
    assert len(mail.outbox) == 1


def test_two_beats_at_once_warn_about_each_grant_once(owner):
    app = make_app("atlassian", kind="atlassian")
    make_service("reports", webhook_url="https://hooks.example/x", webhook_secret=SECRET, app=app)
    grants = [expiring_in(10, owner, app, n) for n in range(12)]
    start = threading.Barrier(2)
    counts: list[int] = []

    def beat() -> None:
        start.wait()
        try:
            counts.append(warn_of_expiring_grants())
        finally:
            connection.close()

    beats = [threading.Thread(target=beat) for _ in range(2)]
    for thread in beats:
        thread.start()
    for thread in beats:
        thread.join(timeout=60)
    assert sum(counts) == len(grants)
    deliveries = WebhookDelivery.objects.filter(event="grant.expiring")
    assert sorted(str(d.grant_id) for d in deliveries) == sorted(str(g.pk) for g in grants)


def test_a_new_consent_is_warned_about_again_when_its_own_end_nears(owner):
    app = make_app("atlassian", kind="atlassian")
    grant = expiring_in(3, owner, app, 1)
    assert warn_of_expiring_grants() == 1

    def reconsented(g: Grant) -> None:
        g.refresh_absolute_expires_at = timezone.now() + timedelta(days=365)

    store_consent(owner, app, grant.external_account_id, reconsented)
    renewed = Grant.objects.get(pk=grant.pk)
    assert renewed.expiry_warning_sent_at is None
    assert warn_of_expiring_grants() == 0  # a year to go
    Grant.objects.filter(pk=grant.pk).update(
        refresh_absolute_expires_at=timezone.now() + timedelta(days=14)
    )
    assert warn_of_expiring_grants() == 1


def test_the_beat_runs_the_warnings():
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert "broker.expiry_warnings.warn_of_expiring_grants" in scheduled
    celery_app.loader.import_default_modules()
    assert "broker.expiry_warnings.warn_of_expiring_grants" in celery_app.tasks


def test_a_final_warning_comes_one_day_before_and_only_once(owner, local_server, eager_celery):
    app = make_app("atlassian", kind="atlassian", name="Atlassian")
    make_service("reports", webhook_url=f"{local_server.url}/hook", webhook_secret=SECRET, app=app)
    grant = expiring_in(10, owner, app, 1)
    assert warn_of_expiring_grants() == 1  # the first warning
    Grant.objects.filter(pk=grant.pk).update(
        refresh_absolute_expires_at=timezone.now() + timedelta(hours=20)
    )
    assert warn_of_expiring_grants() == 1  # the final one
    assert warn_of_expiring_grants() == 0

    finals = [json.loads(hook.body)["data"]["final"] for hook in local_server.requests]
    assert finals == [False, True]
    assert len(mail.outbox) == 2
    told = Grant.objects.get(pk=grant.pk)
    assert told.expiry_warning_sent_at < told.final_expiry_warning_sent_at


def test_a_grant_first_seen_within_a_day_gets_the_final_warning_alone(owner, eager_celery):
    app = make_app("atlassian", kind="atlassian")
    grant = expiring_in(0.5, owner, app, 1)
    assert warn_of_expiring_grants() == 1
    assert warn_of_expiring_grants() == 0
    assert len(mail.outbox) == 1
    told = Grant.objects.get(pk=grant.pk)
    # The first warning counts as given: it never comes late.
    assert told.expiry_warning_sent_at == told.final_expiry_warning_sent_at is not None


def test_an_api_token_is_warned_about_in_its_own_words(owner, eager_celery):
    site = ProviderApp.objects.create(
        slug="acme-site", kind="atlassian-api-token", name="Acme Jira", base_url="https://a.example"
    )
    grant = Grant(
        user=owner,
        provider_app=site,
        external_account_id="acct-1",
        account_email="alice@example.com",
        refresh_absolute_expires_at=timezone.now() + timedelta(days=14),
    )
    grant.seal("api_token", "ATATT-secret")
    grant.save()
    assert warn_of_expiring_grants() == 1
    [email] = mail.outbox
    expires = grant.refresh_absolute_expires_at
    assert email.subject == f"Your Acme Jira API token expires on {expires:%Y-%m-%d}"
    assert "Create a new one" in email.body and "ATATT" not in email.body
