"""The beat's claims (due grants only, oldest first, never the same grant twice at once),
and grants that have nothing to refresh with."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone

from broker.models import Grant, ProviderApp
from broker.refresh import claims, on_demand, redis_keys, single_flight, tasks

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def app():
    return ProviderApp.objects.create(slug="cloud", kind="atlassian", name="Cloud", client_id="c")


def make_grants(owner, app, count: int, *, due_in: timedelta = timedelta(seconds=-1), **fields):
    now = timezone.now()
    batch = Grant.objects.count()
    grants = []
    for n in range(count):
        grant = Grant(
            user=owner,
            provider_app=app,
            external_account_id=f"acc-{batch}-{n}",
            next_refresh_at=now + due_in - timedelta(milliseconds=n),
            **fields,
        )
        grant.seal("refresh_token", f"rt-{n}")
        grants.append(grant)
    Grant.objects.bulk_create(grants)
    return grants


def test_only_active_due_grants_are_claimed_oldest_first(owner, app):
    due = make_grants(owner, app, 3)
    make_grants(owner, app, 2, due_in=timedelta(minutes=5))
    make_grants(owner, app, 2, status=Grant.Status.RECONNECT_REQUIRED)
    enqueued: list[list[str]] = []
    claimed = claims.claim_due_grants(on_claimed=enqueued.append, batch_size=10)
    assert claimed == [str(g.pk) for g in reversed(due)]  # the most overdue first
    assert enqueued == [claimed]
    now = timezone.now()
    for grant in Grant.objects.filter(pk__in=claimed):
        assert grant.refresh_enqueued_at is not None
        assert grant.next_refresh_at > now  # the lease: out of the due range


def test_a_claimed_grant_is_claimed_again_only_after_the_claim_timeout(owner, app, settings):
    settings.BROKER_REFRESH_CLAIM_TIMEOUT = 60
    make_grants(owner, app, 1)
    assert len(claims.claim_due_grants(on_claimed=lambda ids: None)) == 1
    assert claims.claim_due_grants(on_claimed=lambda ids: None) == []
    later = timezone.now() + timedelta(seconds=61)
    assert len(claims.claim_due_grants(on_claimed=lambda ids: None, now=later)) == 1


def test_the_enqueue_callback_runs_only_after_the_claim_is_committed(owner, app):
    make_grants(owner, app, 2)
    seen = []

    def on_claimed(ids):
        # A fresh connection sees the claim: it was committed before we were called.
        def look():
            seen.extend(
                Grant.objects.filter(pk__in=ids, refresh_enqueued_at__isnull=False).values_list(
                    "pk", flat=True
                )
            )
            connections.close_all()

        reader = threading.Thread(target=look)
        reader.start()
        reader.join()

    claimed = claims.claim_due_grants(on_claimed=on_claimed)
    assert len(seen) == len(claimed) == 2


def test_two_beats_at_once_never_claim_a_grant_twice(owner, app):
    make_grants(owner, app, 300)
    claimed: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(2)

    def beat() -> None:
        start.wait()
        try:
            while True:
                ids = claims.claim_due_grants(on_claimed=lambda ids: None, batch_size=20)
                with lock:
                    claimed.extend(ids)
                if not ids:
                    return
        finally:
            connections.close_all()

    beats = [threading.Thread(target=beat) for _ in range(2)]
    for thread in beats:
        thread.start()
    for thread in beats:
        thread.join(timeout=120)
    assert len(claimed) == 300
    assert len(set(claimed)) == 300


def test_the_beat_task_enqueues_one_refresh_task_per_claimed_grant(owner, app, settings):
    settings.BROKER_REFRESH_BATCH_SIZE = 4
    make_grants(owner, app, 10)
    queue = redis_keys.lock_redis()
    queue.delete("celery")
    try:
        assert tasks.enqueue_due_refreshes() == 10
        messages = queue.lrange("celery", 0, -1)
    finally:
        queue.delete("celery")
    import json

    bodies = [json.loads(m) for m in messages]
    assert [b["headers"]["task"] for b in bodies] == ["broker.tasks.refresh_grant"] * 10
    ids = {b["headers"]["argsrepr"] for b in bodies}
    assert len(ids) == 10
    assert tasks.enqueue_due_refreshes() == 0


def test_a_grant_without_refresh_token_is_served_while_valid_and_never_killed_by_force(owner, app):
    grant = Grant(user=owner, provider_app=app, external_account_id="oauth1")
    grant.seal("access_token", "oauth1-token")
    grant.seal("token_secret", "oauth1-secret")
    grant.save()
    served = on_demand.ensure_fresh(grant.pk, min_ttl=3600, force_refresh=True)
    assert served.unseal("access_token") == "oauth1-token"
    assert claims.refresh_grant_now(grant.pk).result == single_flight.Result.NOT_NEEDED
    grant.refresh_from_db()
    assert grant.status == Grant.Status.ACTIVE and grant.unseal("token_secret") == "oauth1-secret"


def test_an_expired_grant_without_refresh_token_needs_reconnecting(owner, app):
    grant = Grant(
        user=owner,
        provider_app=app,
        external_account_id="no-offline-access",
        access_expires_at=timezone.now() - timedelta(seconds=1),
    )
    grant.seal("access_token", "expired")
    grant.save()
    with pytest.raises(on_demand.ReconnectRequired):
        on_demand.ensure_fresh(grant.pk, min_ttl=60)
    grant.refresh_from_db()
    assert grant.status == Grant.Status.RECONNECT_REQUIRED
    assert grant.access_token_sealed == ""
    assert grant.last_error.startswith("no_refresh_token")
