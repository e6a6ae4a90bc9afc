"""The refresh engine against the sandbox (2-second access tokens) and real Redis."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from typing import Any

import pytest
import requests
from django.db import OperationalError, transaction
from django.utils import timezone

from broker.models import (
    AccessRule,
    AuditEvent,
    Grant,
    ProviderApp,
    ServiceClient,
    WebhookDelivery,
)
from broker.refresh import claims, doubt_marks, lock, on_demand, redis_keys, single_flight
from broker.refresh.claims import refresh_grant_now
from broker.refresh.on_demand import ProviderUnavailable, ReconnectRequired, ensure_fresh
from broker.refresh.single_flight import Result
from broker.refresh.tasks import refresh_grant
from tests.other_refresher import REFRESHED_ACCESS_TOKEN, refreshing_elsewhere
from tests.sandbox_grants import (
    connect_grant,
    identity_works,
    refresh_count,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.sandbox]


@pytest.fixture
def grant(sandbox, sandbox_apps, owner):
    return connect_grant(sandbox, owner)


def wait_until_expired(grant: Grant) -> None:
    remaining = (grant.access_expires_at - timezone.now()).total_seconds()
    time.sleep(max(0.0, remaining) + 0.05)


def claim(grant: Grant) -> None:
    """What the beat does for a due grant (without enqueueing)."""
    Grant.objects.filter(pk=grant.pk).update(next_refresh_at=timezone.now())
    assert claims.claim_due_grants(on_claimed=lambda ids: None) == [str(grant.pk)]


def stored(grant: Grant) -> Grant:
    return Grant.objects.get(pk=grant.pk)


def sealed_columns(grant: Grant) -> list[str]:
    return [getattr(grant, f"{name}_sealed") for name in Grant.SEALED_FIELDS]


# -- the happy paths -----------------------------------------------------------------------


def test_a_valid_stored_token_is_served_without_calling_the_provider(sandbox, grant):
    before = refresh_count(sandbox)
    served = ensure_fresh(grant.pk, min_ttl=0)
    assert served.unseal("access_token") == grant.unseal("access_token")
    assert refresh_count(sandbox) == before


def test_an_expired_token_is_refreshed_on_demand(sandbox, grant):
    wait_until_expired(grant)
    before = refresh_count(sandbox)
    served = ensure_fresh(grant.pk, min_ttl=1)
    assert refresh_count(sandbox) == before + 1
    assert served.access_token_valid_for(1)
    assert served.unseal("access_token") != grant.unseal("access_token")
    assert served.unseal("refresh_token") != grant.unseal("refresh_token")
    assert served.token_version == grant.token_version + 1
    assert identity_works(sandbox, served.unseal("access_token"))
    assert AuditEvent.objects.filter(grant_id=grant.pk, action="grant.refreshed").count() == 1


def test_ten_rotations_in_a_row_keep_working_and_superseded_tokens_are_rejected(sandbox, grant):
    before = refresh_count(sandbox)
    superseded = []
    current = grant
    for _ in range(10):
        superseded.append(current.unseal("refresh_token"))
        fresh = ensure_fresh(grant.pk, min_ttl=1, force_refresh=True)
        assert fresh.token_version == current.token_version + 1
        assert fresh.unseal("refresh_token") not in superseded
        assert identity_works(sandbox, fresh.unseal("access_token"))
        current = fresh
    assert refresh_count(sandbox) == before + 10
    # Straight to the sandbox with a superseded refresh token: refused (and, as at
    # Atlassian after the reuse window, the whole family dies with it).
    app = ProviderApp.objects.get(slug="sandbox")
    reuse = requests.post(
        app.endpoint("token"),
        json={
            "grant_type": "refresh_token",
            "client_id": app.client_id,
            "client_secret": app.unseal("client_secret"),
            "refresh_token": superseded[-1],
        },
        timeout=10,
    )
    assert reuse.status_code in (400, 401, 403)
    assert reuse.json()["error"] == "invalid_grant"


def test_force_refresh_returns_a_token_from_a_refresh_after_the_call(sandbox, grant):
    before = refresh_count(sandbox)
    fresh = ensure_fresh(grant.pk, min_ttl=0, force_refresh=True)
    assert refresh_count(sandbox) == before + 1
    assert fresh.unseal("access_token") != grant.unseal("access_token")
    assert fresh.last_refreshed_at >= grant.updated_at


def test_a_refused_token_already_replaced_costs_no_second_refresh(sandbox, grant):
    """The proxy's case: two calls had the same token refused; the first refresh serves
    both, however late the second caller asks (refused_version)."""
    refused = grant.token_version
    first = ensure_fresh(grant.pk, min_ttl=0, force_refresh=True, refused_version=refused)
    before = refresh_count(sandbox)
    second = ensure_fresh(grant.pk, min_ttl=0, force_refresh=True, refused_version=refused)
    assert refresh_count(sandbox) == before
    assert second.unseal("access_token") == first.unseal("access_token")
    third = ensure_fresh(
        grant.pk, min_ttl=0, force_refresh=True, refused_version=first.token_version
    )
    assert refresh_count(sandbox) == before + 1
    assert third.unseal("access_token") != first.unseal("access_token")


def test_a_task_refreshes_a_claimed_grant_once_and_a_duplicate_does_nothing(sandbox, grant):
    claim(grant)
    before = refresh_count(sandbox)
    assert refresh_grant_now(grant.pk, retries_left=3).result == Result.REFRESHED
    assert refresh_grant_now(grant.pk, retries_left=3).result == Result.NOT_NEEDED
    assert refresh_count(sandbox) == before + 1
    after = stored(grant)
    assert after.refresh_enqueued_at is None
    assert after.next_refresh_at > timezone.now()
    assert after.next_refresh_at < after.access_expires_at


def test_a_task_for_a_missing_or_inactive_grant_returns_quietly(sandbox, grant):
    before = refresh_count(sandbox)
    assert refresh_grant_now("00000000-0000-0000-0000-000000000000").result == Result.GONE
    claim(grant)
    Grant.objects.filter(pk=grant.pk).update(status=Grant.Status.REVOKED)
    assert refresh_grant_now(grant.pk).result == Result.GONE
    assert refresh_count(sandbox) == before
    with pytest.raises(ReconnectRequired):
        ensure_fresh(grant.pk, min_ttl=0)


def test_refreshing_inside_an_open_transaction_is_refused_before_calling_upstream(sandbox, grant):
    wait_until_expired(grant)
    before = refresh_count(sandbox)
    with pytest.raises(RuntimeError), transaction.atomic():
        ensure_fresh(grant.pk, min_ttl=1)
    assert refresh_count(sandbox) == before
    assert stored(grant).token_version == grant.token_version


def test_the_reconnect_soon_flag_is_visible_on_the_grant(grant):
    assert grant.refresh_absolute_expires_at is not None  # Atlassian: 365 days
    assert not grant.needs_reconnect_soon
    Grant.objects.filter(pk=grant.pk).update(
        refresh_absolute_expires_at=timezone.now() + timedelta(days=3)
    )
    assert stored(grant).needs_reconnect_soon


# -- failures --------------------------------------------------------------------------------


def test_a_500_is_retried_while_the_current_token_is_still_served(sandbox, grant):
    subscribed_service(grant.provider_app)
    claim(grant)
    sandbox.faults(mode="error500", times=1)
    outcome = refresh_grant_now(grant.pk, retries_left=3)
    assert outcome.result == Result.PROVIDER_FAILED
    assert outcome.task_retry_in is not None and outcome.task_retry_in >= 1
    failed = stored(grant)
    assert failed.status == Grant.Status.ACTIVE
    assert failed.failure_count == 1
    assert failed.last_error.startswith("http_500")
    assert failed.refresh_enqueued_at is not None  # the task keeps its claim for the retry
    assert failed.unseal("refresh_token") == grant.unseal("refresh_token")
    # The stored token is still served while valid, with no call upstream.
    before = refresh_count(sandbox)
    assert ensure_fresh(grant.pk, min_ttl=0).unseal("access_token") == grant.unseal("access_token")
    assert refresh_count(sandbox) == before
    # The retry succeeds and clears the failure.
    assert refresh_grant_now(grant.pk, retries_left=2).result == Result.REFRESHED
    healed = stored(grant)
    assert (healed.failure_count, healed.last_error, healed.status) == (0, "", "active")
    event = AuditEvent.objects.get(grant_id=grant.pk, action="grant.refresh_failed")
    assert event.detail["reason"] == "provider_unavailable"
    assert not WebhookDelivery.objects.exists()  # transient trouble is not broadcast


def test_a_500_without_a_valid_token_left_is_provider_unavailable_not_reconnect(sandbox, grant):
    wait_until_expired(grant)
    sandbox.faults(mode="error500")
    with pytest.raises(ProviderUnavailable) as raised:
        ensure_fresh(grant.pk, min_ttl=1)
    assert raised.value.retry_after >= 1
    failed = stored(grant)
    assert failed.status == Grant.Status.ACTIVE
    assert failed.has_secret("refresh_token")
    assert failed.next_refresh_at > timezone.now()  # backoff for the beat


def test_a_429_honours_retry_after(sandbox, grant):
    wait_until_expired(grant)
    sandbox.faults(mode="ratelimit", retry_after=30, times=1)
    started = timezone.now()
    with pytest.raises(ProviderUnavailable) as raised:
        ensure_fresh(grant.pk, min_ttl=1)
    assert raised.value.retry_after >= 30
    failed = stored(grant)
    assert failed.next_refresh_at >= started + timedelta(seconds=30)
    assert failed.last_error.startswith("http_429")
    assert failed.status == Grant.Status.ACTIVE


def test_the_task_retries_after_the_providers_retry_after(
    sandbox, grant, eager_celery, celery_retries
):
    claim(grant)
    sandbox.faults(mode="ratelimit", retry_after=7, times=1)
    refresh_grant.apply(args=[str(grant.pk)])
    waits = [wait for name, wait in celery_retries if name == refresh_grant.name]
    assert len(waits) == 1 and waits[0] >= 7  # the 429's Retry-After, not a shorter backoff
    refreshed = stored(grant)  # the retry (run at once here) refreshed it
    assert refreshed.unseal("access_token") != grant.unseal("access_token")
    assert refreshed.failure_count == 0 and refreshed.status == Grant.Status.ACTIVE


def test_force_refresh_with_the_provider_failing_is_provider_unavailable(sandbox, grant):
    sandbox.faults(mode="error500")
    with pytest.raises(ProviderUnavailable):
        ensure_fresh(grant.pk, min_ttl=0, force_refresh=True)
    # Without force, the still-valid token is served.
    assert ensure_fresh(grant.pk, min_ttl=0).unseal("access_token") == grant.unseal("access_token")


def test_a_refresh_slower_than_the_timeout_is_retried_not_reconnect(
    reuse_window_apps, owner, settings
):
    """The provider may have processed a request the broker gave up on: the retry reuses
    the refresh token inside Atlassian's reuse window and the grant lives on."""
    sandbox = reuse_window_apps
    grant = connect_grant(sandbox, owner)
    settings.BROKER_PROVIDER_TIMEOUT = 1
    claim(grant)
    sandbox.faults(mode="slow", delay=2.5, times=1)
    try:
        outcome = refresh_grant_now(grant.pk, retries_left=3)
    finally:
        sandbox.faults(mode="none")
    assert outcome.result == Result.PROVIDER_FAILED
    failed = stored(grant)
    assert failed.last_error.startswith("timeout")
    assert failed.status == Grant.Status.ACTIVE
    time.sleep(2)  # the sandbox finishes the abandoned request meanwhile
    assert refresh_grant_now(grant.pk, retries_left=2).result == Result.REFRESHED
    fresh = ensure_fresh(grant.pk, min_ttl=1, force_refresh=True)
    assert identity_works(sandbox, fresh.unseal("access_token"))


def token_history(sandbox) -> dict:
    response = requests.post(
        f"{sandbox.url}/_sandbox/token-history", json={"access_tokens": []}, timeout=10
    )
    response.raise_for_status()
    return response.json()


class Killed(BaseException):
    """A worker SIGKILLed: nothing after it runs (no except, no cleanup of ours)."""


def cut_short(grant: Grant, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker's refresh of `grant` killed once the provider answered, before the commit."""

    def killed(*args: Any, **kwargs: Any) -> None:
        raise Killed

    claim(grant)
    with monkeypatch.context() as patched:
        patched.setattr(single_flight, "persist_refresh", killed)
        with pytest.raises(Killed):
            refresh_grant_now(grant.pk, retries_left=3)


def test_a_refresh_cut_short_is_redone_at_once_inside_the_reuse_window(
    reuse_window_apps, owner, settings, monkeypatch
):
    """A worker killed between the provider's answer and the commit: the provider retired
    the stored access token and consumed the refresh token. The stored token is not served;
    once the dead holder's lock lapses the next caller presents the refresh token again,
    inside the provider's reuse window, and the grant lives on."""
    sandbox = reuse_window_apps
    grant = connect_grant(sandbox, owner)
    before = token_history(sandbox)
    settings.BROKER_PROVIDER_TIMEOUT = 1  # waiters give up on a held lock after 2 s
    cut_short(grant, monkeypatch)
    assert not identity_works(sandbox, grant.unseal("access_token"))  # retired upstream
    assert doubt_marks.stored_token_in_doubt(grant)
    # The dead worker's lock outlives it a while (here 2.5 s, beyond a waiter's 2 s).
    dead_holders = redis_keys.lock_redis().lock(redis_keys.lock_key(grant.pk), timeout=2.5)
    assert dead_holders.acquire(blocking=False)
    with pytest.raises(ProviderUnavailable):
        ensure_fresh(grant.pk, min_ttl=0)  # never the retired token
    time.sleep(0.6)
    redone = ensure_fresh(grant.pk, min_ttl=0)
    # The redo was answered with what the provider issued at the lost answer, spent by now
    # (the sandbox's tokens last 2 s): refreshed once more with the refresh token that came
    # with it, so what is served works.
    assert redone.token_version == grant.token_version + 2
    assert identity_works(sandbox, redone.unseal("access_token"))
    assert not doubt_marks.stored_token_in_doubt(redone)
    fresh = ensure_fresh(grant.pk, min_ttl=0, force_refresh=True)
    assert fresh.status == Grant.Status.ACTIVE
    assert identity_works(sandbox, fresh.unseal("access_token"))
    after = token_history(sandbox)
    assert after["refresh_tokens_presented_twice"] == before["refresh_tokens_presented_twice"] + 1
    assert after["refresh_tokens_reused_outside_window"] == 0
    assert after["reuse_window_seconds"] == 600


def test_a_redone_refresh_counts_the_tokens_lifetime_from_the_first_attempt(
    reuse_window_apps, owner, monkeypatch
):
    """The answer to a refresh token presented again is the token issued at the first
    attempt: its expiry counts from then, or it would be served after it expired."""
    sandbox = reuse_window_apps
    grant = connect_grant(sandbox, owner)
    cut_short(grant, monkeypatch)
    first_attempt_answered = timezone.now()
    time.sleep(0.5)
    assert refresh_grant_now(grant.pk).result == Result.REFRESHED
    redone = stored(grant)
    assert redone.token_version == grant.token_version + 1  # still valid: not refreshed again
    lifetime = timedelta(seconds=2)  # the sandbox's
    assert redone.access_expires_at <= first_attempt_answered + lifetime
    assert identity_works(sandbox, redone.unseal("access_token"))


def test_a_timed_out_refresh_keeps_the_stored_token_from_being_served(
    reuse_window_apps, owner, settings
):
    """An answer that comes after BROKER_PROVIDER_TIMEOUT rotated the tokens upstream: the
    broker serves no token until a retry (inside the reuse window) stored the new pair."""
    sandbox = reuse_window_apps
    grant = connect_grant(sandbox, owner)
    settings.BROKER_PROVIDER_TIMEOUT = 1
    claim(grant)
    sandbox.faults(mode="slow", delay=2, times=1)
    try:
        assert refresh_grant_now(grant.pk, retries_left=0).result == Result.PROVIDER_FAILED
    finally:
        sandbox.faults(mode="none")
    assert doubt_marks.stored_token_in_doubt(grant)
    time.sleep(1.5)  # the sandbox finishes the abandoned request meanwhile
    redone = ensure_fresh(grant.pk, min_ttl=0)  # redone at once, not after the backoff
    assert redone.token_version > grant.token_version
    fresh = ensure_fresh(grant.pk, min_ttl=0, force_refresh=True)  # the family lives on
    assert identity_works(sandbox, fresh.unseal("access_token"))
    assert token_history(sandbox)["refresh_tokens_reused_outside_window"] == 0


def test_an_error_answer_consumed_nothing_and_leaves_no_doubt(sandbox, grant):
    sandbox.faults(mode="error500", times=1)
    claim(grant)
    assert refresh_grant_now(grant.pk).result == Result.PROVIDER_FAILED
    assert not doubt_marks.stored_token_in_doubt(grant)
    served = ensure_fresh(grant.pk, min_ttl=0)
    assert served.unseal("access_token") == grant.unseal("access_token")


def subscribed_service(app: ProviderApp) -> ServiceClient:
    service = ServiceClient(client_id="svc", name="Svc", webhook_url="https://svc.example/hook")
    service.seal("webhook_secret", "whsec")
    service.save()
    AccessRule.objects.create(service=service, provider_app=app)
    return service


def test_an_upstream_revoke_makes_the_grant_reconnect_required_in_one_cycle(sandbox, grant):
    service = subscribed_service(grant.provider_app)
    sandbox.revoke_user("alice")
    claim(grant)
    assert refresh_grant_now(grant.pk, retries_left=3).result == Result.RECONNECT_REQUIRED
    dead = stored(grant)
    assert dead.status == Grant.Status.RECONNECT_REQUIRED
    assert sealed_columns(dead) == [""] * len(Grant.SEALED_FIELDS)
    assert dead.next_refresh_at is None and dead.refresh_enqueued_at is None
    assert dead.last_error.startswith("invalid_grant")
    event = AuditEvent.objects.get(grant_id=grant.pk, action="grant.reconnect_required")
    assert event.outcome == "failure" and event.subject_user == "alice"
    # Subscribed services are told (broker.notify.dispatch), once.
    delivery = WebhookDelivery.objects.get(service=service, grant_id=grant.pk)
    assert delivery.event == "grant.reconnect_required"
    assert '"status":"reconnect_required"' in delivery.body
    with pytest.raises(ReconnectRequired):
        ensure_fresh(grant.pk, min_ttl=0)
    # Nothing more goes upstream for a dead grant.
    before = refresh_count(sandbox)
    assert claims.claim_due_grants(on_claimed=lambda ids: None) == []
    assert refresh_grant_now(grant.pk).result == Result.GONE
    assert refresh_count(sandbox) == before


def test_a_rejected_client_alerts_admins_and_keeps_the_grant(sandbox, grant, caplog):
    app = ProviderApp.objects.get(slug="sandbox")
    service = subscribed_service(app)
    real_secret = app.unseal("client_secret")
    app.seal("client_secret", "wrong-secret")
    app.save()
    claim(grant)
    with caplog.at_level(logging.ERROR, logger="broker.refresh.single_flight"):
        outcome = refresh_grant_now(grant.pk, retries_left=0)
    assert outcome.result == Result.CLIENT_MISCONFIGURED
    assert outcome.task_retry_in is None  # no retries left: back to the beat
    kept = stored(grant)
    assert kept.status == Grant.Status.ACTIVE
    assert kept.unseal("refresh_token") == grant.unseal("refresh_token")
    assert kept.refresh_enqueued_at is None and kept.next_refresh_at > timezone.now()
    event = AuditEvent.objects.get(grant_id=grant.pk, action="grant.refresh_failed")
    assert event.detail["reason"] == "client_misconfigured"
    assert event.detail["error"].startswith("invalid_client")
    assert WebhookDelivery.objects.get(service=service).event == "grant.refresh_failed"
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("rejected the client of app sandbox" in line for line in errors)
    for secret in ("wrong-secret", real_secret, grant.unseal("refresh_token")):
        assert all(secret not in line for line in errors)
        assert secret not in str(event.detail)
    # Fixed by an admin: the same refresh token still works (it was never consumed).
    app.seal("client_secret", real_secret)
    app.save()
    claim(grant)
    assert refresh_grant_now(grant.pk).result == Result.REFRESHED


def test_waiters_wake_at_the_announced_release_not_at_their_next_look(grant, monkeypatch):
    """Callers waiting for another process's refresh are woken by the announcement of its
    lock's release, not by their look at the lock every WAIT_RECHECK_SECONDS."""
    monkeypatch.setattr(lock, "WAIT_RECHECK_SECONDS", 30.0)
    started = time.monotonic()
    with refreshing_elsewhere(grant, commits_after=0.5):
        fresh = ensure_fresh(grant.pk, min_ttl=0, force_refresh=True)
    assert fresh.unseal("access_token") == REFRESHED_ACCESS_TOKEN
    assert time.monotonic() - started < 3


def test_a_holder_that_never_announces_its_release_is_seen_gone_at_the_next_look(grant):
    """A killed holder's lock lapses unannounced (so does one of a process of an older
    release): its waiters find it gone at their next look."""
    redis_keys.lock_redis().set(redis_keys.lock_key(grant.pk), "killed", px=300)
    started = time.monotonic()
    ended = lock.wait_for_refresh_in_flight(grant.pk, wait=5)
    assert ended is not None and ended.grant is not None and ended.grant.pk == grant.pk
    assert time.monotonic() - started < 0.3 + lock.WAIT_RECHECK_SECONDS + 0.5


def test_a_caller_beaten_to_the_lock_waits_with_the_others_not_for_its_turn(grant, monkeypatch):
    """A refresh that begins between a caller's look for one in flight and its try for the
    lock: the caller waits for its release and takes its result, as those who saw it do,
    instead of taking the lock in turn after it (one after the other, each re-reading the
    grant under the lock, while the answers are due)."""
    real_wait = lock.wait_for_refresh_in_flight
    real_lock = lock.refresh_lock
    held: list[bool] = []

    @contextmanager
    def recorded_lock(grant_id: Any, *, wait: float) -> Iterator[lock.HeldLock | None]:
        with real_lock(grant_id, wait=wait) as acquired:
            held.append(acquired is not None)
            yield acquired

    with ExitStack() as elsewhere:
        looks: list[float] = []

        def look_then_beaten(grant_id: Any, *, wait: float) -> lock.RefreshEnded | None:
            ended = real_wait(grant_id, wait=wait)
            if not looks:  # nothing in flight yet; another process takes the lock now
                elsewhere.enter_context(refreshing_elsewhere(grant, commits_after=0.5))
            looks.append(wait)
            return ended

        monkeypatch.setattr(on_demand, "wait_for_refresh_in_flight", look_then_beaten)
        # (where this caller takes it, and where `refreshing_elsewhere` does)
        monkeypatch.setattr(single_flight, "refresh_lock", recorded_lock)
        monkeypatch.setattr(lock, "refresh_lock", recorded_lock)
        fresh = ensure_fresh(grant.pk, min_ttl=0, force_refresh=True)
    assert fresh.unseal("access_token") == REFRESHED_ACCESS_TOKEN
    assert len(looks) == 2
    # The other process took the lock (`refreshing_elsewhere` takes it as the engine
    # does); this caller tried once, in vain, and never took it.
    assert held == [True, False]


def test_a_lock_held_elsewhere_is_busy_never_an_authorization_failure(sandbox, grant, settings):
    settings.BROKER_PROVIDER_TIMEOUT = 0.5  # callers wait 2 x this for the lock
    wait_until_expired(grant)
    held = redis_keys.lock_redis().lock(redis_keys.lock_key(grant.pk), timeout=10)
    assert held.acquire(blocking=False)
    before = refresh_count(sandbox)
    try:
        with pytest.raises(ProviderUnavailable):
            ensure_fresh(grant.pk, min_ttl=1)
        claim(grant)
        outcome = refresh_grant_now(grant.pk, retries_left=2)
    finally:
        held.release()
    assert outcome.result == Result.BUSY and outcome.task_retry_in
    assert refresh_count(sandbox) == before
    untouched = stored(grant)
    assert untouched.status == Grant.Status.ACTIVE and untouched.failure_count == 0


def test_a_database_failure_after_the_provider_answered_loses_no_token(sandbox, grant, monkeypatch):
    wait_until_expired(grant)
    real_persist = single_flight.persist_refresh
    calls = []

    def database_away_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("server closed the connection unexpectedly")
        return real_persist(*args, **kwargs)

    monkeypatch.setattr(single_flight, "persist_refresh", database_away_once)
    before = refresh_count(sandbox)
    with pytest.raises(ProviderUnavailable):
        ensure_fresh(grant.pk, min_ttl=1)
    assert refresh_count(sandbox) == before + 1
    assert stored(grant).token_version == grant.token_version  # nothing written
    rescued = redis_keys.lock_redis().get(redis_keys.rescue_key(grant.pk))
    assert rescued is not None
    assert redis_keys.lock_redis().ttl(redis_keys.rescue_key(grant.pk)) <= 600
    rescue = doubt_marks.read_rescue(grant.pk)
    assert rescue.response.refresh_token.encode() not in rescued  # sealed, not plaintext
    assert rescue.response.access_token.encode() not in rescued

    served = ensure_fresh(grant.pk, min_ttl=1)
    assert refresh_count(sandbox) == before + 1  # applied from the rescue, no second call
    assert served.unseal("refresh_token") == rescue.response.refresh_token
    assert served.unseal("access_token") == rescue.response.access_token
    assert redis_keys.lock_redis().get(redis_keys.rescue_key(grant.pk)) is None
    # The stored refresh token is the rotated one: the strict sandbox accepts it.
    again = ensure_fresh(grant.pk, min_ttl=1, force_refresh=True)
    assert again.status == Grant.Status.ACTIVE
    assert identity_works(sandbox, again.unseal("access_token"))


def test_a_rescued_response_only_opens_for_its_own_grant(sandbox, sandbox_apps, owner):
    from broker.providers.oauth2_client import TokenResponse

    first = connect_grant(sandbox, owner)
    second = connect_grant(sandbox, owner, username="bob")
    response = TokenResponse("at", "rt", 2, None, "Bearer")
    rescue = doubt_marks.Rescue(response, based_on_version=1, received_at=timezone.now())
    assert doubt_marks.stash_rescue(first.pk, rescue)
    client = redis_keys.lock_redis()
    sealed_for_first = client.get(redis_keys.rescue_key(first.pk))
    client.set(redis_keys.rescue_key(second.pk), sealed_for_first)
    assert doubt_marks.read_rescue(second.pk) is None  # does not decrypt: dropped
    assert client.get(redis_keys.rescue_key(second.pk)) is None
    assert doubt_marks.read_rescue(first.pk).response.refresh_token == "rt"
    doubt_marks.drop_rescue(first.pk)


def test_a_rescued_redo_keeps_the_lifetime_of_its_first_attempt(grant):
    """A redo's answer rescued to Redis (its write failed) is applied later with the
    lifetime of the first attempt, not from when it came or when it was applied."""
    from broker.providers.oauth2_client import TokenResponse

    first_attempt = timezone.now() - timedelta(seconds=30)
    response = TokenResponse("rescued-access", "rescued-refresh", 3600, None, "Bearer")
    rescue = doubt_marks.Rescue(
        response,
        based_on_version=grant.token_version,
        received_at=timezone.now(),
        lifetime_from=first_attempt,
    )
    assert doubt_marks.stash_rescue(grant.pk, rescue)
    applied = single_flight.apply_rescue(grant, doubt_marks.read_rescue(grant.pk))
    assert applied.unseal("access_token") == "rescued-access"
    expected = first_attempt + timedelta(seconds=3600)
    assert abs(applied.access_expires_at - expected) < timedelta(milliseconds=1)


def test_a_pending_rescue_is_applied_before_the_stored_token_is_served(sandbox, grant, monkeypatch):
    real_persist = single_flight.persist_refresh
    calls = []

    def database_away_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("database is locked")
        return real_persist(*args, **kwargs)

    monkeypatch.setattr(single_flight, "persist_refresh", database_away_once)
    with pytest.raises(ProviderUnavailable):
        ensure_fresh(grant.pk, min_ttl=0, force_refresh=True)
    rescue = doubt_marks.read_rescue(grant.pk)
    # The stored access token still looks valid, but the provider replaced it: the
    # rescued one is served instead, with no second call upstream.
    before = refresh_count(sandbox)
    served = ensure_fresh(grant.pk, min_ttl=0)
    assert served.unseal("access_token") == rescue.response.access_token
    assert served.unseal("access_token") != grant.unseal("access_token")
    assert refresh_count(sandbox) == before
