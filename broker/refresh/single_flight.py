"""The single-flight section: one upstream refresh of a grant at a time, and the writes of
its result.

Atlassian (and Data Center) rotate refresh tokens: every refresh consumes the token it
sends (RFC 6749 section 6 allows this; RFC 9700 section 4.14.2 recommends it), so two
concurrent refreshes of one grant, or one lost write of a rotated token, kill the grant.
Everything in broker.refresh exists to make that impossible; `single_flight` is the only
code that calls `broker.providers.oauth2_client.refresh` for a stored grant, for both the
API's on-demand path (broker.refresh.on_demand) and the worker (broker.refresh.claims).

A Redis lock plus a fencing token in the database
  Each refresh runs under the grant's lock (broker.refresh.lock). The holder re-reads the
  grant and skips the call when someone else already refreshed. Every write of a
  refresh's result is a conditional UPDATE on the `token_version` read before the call
  (and `status=active`), so a holder whose lock expired while it was stalled can never
  overwrite newer tokens or resurrect a revoked grant, and a stale `invalid_grant` cannot
  kill a grant someone else refreshed meanwhile.
  Why not a PostgreSQL row lock (`select_for_update`) held across the HTTP call: it pins a
  database connection and an open transaction for up to the provider timeout per refresh,
  and on SQLite (the default database) the only lock is the whole-database write lock, so
  every other write of the site would queue behind one slow provider. Redis is already a
  hard dependency (Celery broker), the lock costs two round trips, and the fence keeps the
  database the single source of truth if Redis loses the lock.

Persist first, and refreshes in doubt: see broker.refresh.doubt_marks. A response without
a refresh token keeps the stored one (`broker.refresh.schedule.apply_token_response`).

Failure taxonomy (as Vault's oauthapp plugin sorts them, via broker.providers.oauth2_client)
- GrantRejected -> `reconnect_required`, tokens wiped, no next refresh, audit + announce.
- ClientMisconfigured -> ERROR log and `grant.refresh_failed` (reason client_misconfigured)
  for admins; the grant stays active, the current token is served while valid, retried
  with backoff.
- TransientTokenError -> retried with exponential backoff and jitter, honouring
  Retry-After; the current token is served while valid.
Failures count in `failure_count` and `last_error` (code and short text, never a secret).
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import redis
from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import F
from django.utils import timezone

from broker.audit import trail
from broker.models import Grant
from broker.notify.dispatch import notify
from broker.ops import metrics
from broker.providers.oauth2_client import (
    ClientMisconfigured,
    GrantRejected,
    TokenEndpointError,
    TokenResponse,
    TransientTokenError,
)
from broker.providers.oauth2_client import refresh as refresh_upstream
from broker.refresh.doubt_marks import (
    Rescue,
    clear_in_flight,
    drop_rescue,
    mark_in_flight,
    stash_rescue,
    unseal_rescue,
)
from broker.refresh.grant_statements import load, load_or_none, update_and_record_if_current
from broker.refresh.lock import HeldLock, refresh_lock, release_database_connection
from broker.refresh.schedule import apply_token_response
from broker.refresh.timing import backoff_seconds, claim_timeout, lock_wait

log = logging.getLogger(__name__)

SYSTEM_ACTOR = "refresh-engine"


class Result(enum.StrEnum):
    REFRESHED = "refreshed"
    NOT_NEEDED = "not_needed"  # someone else refreshed, or the grant is not due
    GONE = "gone"  # deleted, or not active
    RECONNECT_REQUIRED = "reconnect_required"
    PROVIDER_FAILED = "provider_failed"  # transient; retry later
    CLIENT_MISCONFIGURED = "client_misconfigured"  # admins must act; retry later
    BUSY = "busy"  # lock not had in time, or Redis away; retry soon
    DATABASE_UNAVAILABLE = "database_unavailable"  # response rescued in Redis


@dataclass(frozen=True)
class RefreshOutcome:
    result: Result
    # Seconds until the next attempt makes sense (failures only).
    retry_after: int | None = None
    # For the task: retry itself after this many seconds (it kept its claim); None: done,
    # or the beat picks the grant up again via next_refresh_at.
    task_retry_in: int | None = None


def require_no_outer_transaction() -> None:
    """A rotated token must be committed when the refresh returns: an outer transaction
    could still roll it back after the provider consumed the old refresh token. Checked
    before the upstream call, when failing costs nothing (durable=True raises if nested)."""
    with transaction.atomic(durable=True):
        pass


def persist_refresh(
    grant: Grant,
    response: TokenResponse,
    *,
    seen_version: int,
    received_at: datetime,
    lifetime_from: datetime | None = None,
) -> bool:
    """The one write of a refresh's result, fenced on the token_version read before the
    call. Returns False when the grant moved on (newer tokens, revoked) and nothing was
    written. The audit event is part of the same transaction. `lifetime_from`: when the
    tokens' lifetimes began, for a redo of a refresh in doubt (`MarkedInFlight.redo_of`;
    default received_at)."""
    grant.token_version = seen_version
    fields = apply_token_response(
        grant, response, now=received_at, lifetime_from=lifetime_from, refreshed=True
    )
    values = {name: getattr(grant, name) for name in fields if name != "updated_at"}
    values["updated_at"] = timezone.now()
    event = trail.event_fields(
        "grant.refreshed",
        actor_type=trail.ActorType.SYSTEM,
        actor=SYSTEM_ACTOR,
        grant_id=grant.pk,
        subject_user=grant.user.get_username(),
        provider=grant.provider_app.slug,
        scopes=grant.scopes,
        token_version=grant.token_version,
    )
    return update_and_record_if_current(grant.pk, seen_version, values, event)


def describe(exc: TokenEndpointError) -> str:
    """For last_error: the provider's code and short text (token_endpoint keeps tokens out)."""
    text = f"{exc.error}: {exc.description}" if exc.description else exc.error
    return text[:500]


def announce(event: str, grant: Grant, **detail: Any) -> None:
    """The single call site for what admins, users and services are told about a grant
    (`grant.refresh_failed`, `grant.reconnect_required`), called after the state change is
    committed: the audit event, and the webhooks / user email of broker.notify.dispatch.
    Transient provider trouble is audited only: an outage would otherwise send every
    subscriber one webhook per grant and retry."""
    if detail.get("reason") != "provider_unavailable":
        notify(event, grant, **detail)
    trail.record(
        event,
        actor_type=trail.ActorType.SYSTEM,
        actor=SYSTEM_ACTOR,
        outcome=trail.Outcome.FAILURE,
        grant_id=grant.pk,
        subject_user=grant.user.get_username(),
        provider=grant.provider_app.slug,
        **detail,
    )


def mark_reconnect_required(grant: Grant, *, seen_version: int, error: str, reason: str) -> bool:
    """The grant is dead upstream: wipe its tokens and stop refreshing it. Fenced like a
    refresh, so an `invalid_grant` for a refresh token someone else already replaced does
    not kill the grant."""
    now = timezone.now()
    wiped = dict.fromkeys(grant.wipe_secrets(), "")
    with transaction.atomic(durable=True):
        written = Grant.objects.filter(
            pk=grant.pk, token_version=seen_version, status=Grant.Status.ACTIVE
        ).update(
            **wiped,
            status=Grant.Status.RECONNECT_REQUIRED,
            token_version=F("token_version") + 1,
            next_refresh_at=None,
            refresh_enqueued_at=None,
            failure_count=F("failure_count") + 1,
            last_error=error[:500],
            updated_at=now,
        )
    if written:
        grant.status = Grant.Status.RECONNECT_REQUIRED
        log.info("grant %s needs reconnecting (%s)", grant.pk, reason)
        announce("grant.reconnect_required", grant, reason=reason, error=error[:200])
    return written == 1


def record_failure(
    grant: Grant,
    exc: TokenEndpointError,
    *,
    seen_version: int,
    reason: str,
    task_may_retry: bool,
) -> tuple[int, bool]:
    """Counts a failed refresh and schedules the next attempt.

    Returns (seconds until the next attempt, whether the calling task keeps its claim and
    retries itself then). A task keeps the claim (for the backoff plus the claim timeout)
    only for short backoffs; otherwise, and on the on-demand path, the claim is released
    and the beat picks the grant up again at the backoff time via next_refresh_at.
    """
    delay = backoff_seconds(grant.failure_count + 1, getattr(exc, "retry_after", None))
    keep_claim = task_may_retry and delay <= settings.BROKER_REFRESH_TASK_MAX_COUNTDOWN
    now = timezone.now()
    next_attempt = now + timedelta(seconds=delay)
    still_current = Grant.objects.filter(
        pk=grant.pk, token_version=seen_version, status=Grant.Status.ACTIVE
    )
    counted = still_current.update(
        failure_count=F("failure_count") + 1,
        last_error=describe(exc),
        next_refresh_at=next_attempt + claim_timeout() if keep_claim else next_attempt,
        refresh_enqueued_at=now if keep_claim else None,
        updated_at=now,
    )
    if not counted:  # the grant changed meanwhile (refreshed, revoked): nothing to report
        return delay, False
    if reason == "client_misconfigured":
        # Admins must fix the provider app; users are not sent back through consent.
        log.error(
            "refresh of grant %s: the provider rejected the client of app %s (%s)",
            grant.pk,
            grant.provider_app.slug,
            exc.error,
        )
    else:
        log.warning("refresh of grant %s failed (%s), next in %ss", grant.pk, exc.error, delay)
    announce("grant.refresh_failed", grant, reason=reason, error=describe(exc)[:200])
    return delay, keep_claim


def apply_rescue(grant: Grant, rescue: Rescue | None) -> Grant:
    """Finishes the write of a response that was rescued to Redis, before anything else.
    Raises DatabaseError while the database is still away (then nothing may go upstream)."""
    if rescue is None:
        return grant
    written = persist_refresh(
        grant,
        rescue.response,
        seen_version=rescue.based_on_version,
        received_at=rescue.received_at,
        lifetime_from=rescue.lifetime_from,
    )
    # Written, or the grant moved on (refreshed, reconnected, revoked): stale either way.
    drop_rescue(grant.pk)
    if written:
        log.info("grant %s: rescued token response applied", grant.pk)
    return load(grant.pk)


# broker_refreshes_total{outcome} labels (see broker.ops.metrics).
METRIC_OUTCOMES = {
    Result.REFRESHED: "success",
    Result.NOT_NEEDED: "superseded",
    Result.RECONNECT_REQUIRED: "dead",
    Result.PROVIDER_FAILED: "provider_unavailable",
    Result.CLIENT_MISCONFIGURED: "client_misconfigured",
    Result.DATABASE_UNAVAILABLE: "database_unavailable",
}


def call_upstream(grant: Grant, held: HeldLock, *, task_may_retry: bool) -> RefreshOutcome:
    """One refresh at the provider, under the lock `held`, and the write of whatever came
    back; counted in the metrics afterwards (sent with the lock's release)."""
    started = time.monotonic()
    outcome = refresh_and_store(grant, held, task_may_retry=task_may_retry)
    metrics.queue_refresh(
        held.at_release,
        METRIC_OUTCOMES.get(outcome.result, str(outcome.result)),
        time.monotonic() - started,
    )
    return outcome


def refresh_and_store(grant: Grant, held: HeldLock, *, task_may_retry: bool) -> RefreshOutcome:
    seen_version = grant.token_version
    app = grant.provider_app
    refresh_token = grant.unseal("refresh_token") or ""
    marked = mark_in_flight(grant.pk, seen_version)
    if marked is None:
        return RefreshOutcome(Result.BUSY, retry_after=1)
    release_database_connection()  # the provider may take BROKER_PROVIDER_TIMEOUT
    try:
        response = refresh_upstream(
            app, refresh_token=refresh_token, redirect_uri=grant.redirect_uri
        )
    except GrantRejected as exc:
        mark_reconnect_required(
            grant, seen_version=seen_version, error=describe(exc), reason=exc.error
        )
        return RefreshOutcome(Result.RECONNECT_REQUIRED)
    except (ClientMisconfigured, TransientTokenError) as exc:
        if exc.status is not None:
            # The provider answered with an error: it consumed nothing. A timeout or a
            # broken connection leaves the refresh in doubt (it may have been processed).
            clear_in_flight(grant.pk)
        misconfigured = isinstance(exc, ClientMisconfigured)
        delay, keep_claim = record_failure(
            grant,
            exc,
            seen_version=seen_version,
            reason="client_misconfigured" if misconfigured else "provider_unavailable",
            task_may_retry=task_may_retry,
        )
        result = Result.CLIENT_MISCONFIGURED if misconfigured else Result.PROVIDER_FAILED
        retry_in = delay if keep_claim else None
        return RefreshOutcome(result, retry_after=delay, task_retry_in=retry_in)
    received_at = timezone.now()
    try:
        written = persist_refresh(
            grant,
            response,
            seen_version=seen_version,
            received_at=received_at,
            lifetime_from=marked.redo_of,
        )
    except DatabaseError as exc:
        log.error("grant %s: refreshed tokens not written (%s); rescued", grant.pk, exc)
        rescue = Rescue(response, seen_version, received_at, marked.redo_of)
        stash_rescue(grant.pk, rescue)
        return RefreshOutcome(Result.DATABASE_UNAVAILABLE, retry_after=1)
    if not written:
        log.warning("grant %s changed during its refresh; the newer state was kept", grant.pk)
        return RefreshOutcome(Result.NOT_NEEDED)
    return RefreshOutcome(Result.REFRESHED)


def single_flight(
    grant_id: Any,
    *,
    needs_refresh: Callable[[Grant, bool], bool],
    task_may_retry: bool = False,
    reload: bool = True,
    wait: float | None = None,
) -> tuple[RefreshOutcome, Grant | None]:
    """Takes the grant's lock, applies any rescued response, re-reads the grant and calls
    the provider only if `needs_refresh(grant, in_doubt)` still says so (in_doubt: an
    earlier refresh of the stored refresh token has an unknown outcome). Returns the
    outcome and the grant as stored afterwards (None when it is gone; also after a
    provider call when `reload` is False: the worker needs only the outcome). `wait`: how
    long to wait for the lock (default `lock_wait()`)."""
    with refresh_lock(grant_id, wait=lock_wait() if wait is None else wait) as held:
        if not held:
            # Someone else's refresh is still running (or Redis is away): what is stored
            # now may still do for the caller.
            busy = RefreshOutcome(Result.BUSY, retry_after=math.ceil(lock_wait()) or 1)
            return busy, load_or_none(grant_id)
        grant = load_or_none(grant_id)
        if grant is None:
            return RefreshOutcome(Result.GONE), None
        try:
            # Read when the lock was taken (they are written under it).
            grant = apply_rescue(grant, unseal_rescue(grant.pk, held.rescued))
            # An earlier refresh from the version stored has an unknown outcome: its
            # holder died, or the answer came too late.
            in_doubt = held.marked == grant.token_version
        except DatabaseError:
            # A response is waiting in Redis: nothing stored may be served or sent upstream.
            return RefreshOutcome(Result.DATABASE_UNAVAILABLE, retry_after=1), None
        except redis.RedisError as exc:
            log.warning("grant %s: rescue not readable (%s)", grant_id, type(exc).__name__)
            return RefreshOutcome(Result.BUSY, retry_after=1), grant
        if not grant.is_active or not grant.user.is_active:
            return RefreshOutcome(Result.GONE), grant
        if not needs_refresh(grant, in_doubt):
            return RefreshOutcome(Result.NOT_NEEDED), grant
        if in_doubt:
            log.warning(
                "grant %s: the outcome of its last refresh is unknown (answer lost: a process"
                " died or the provider answered too late); refreshing again with the same"
                " refresh token, inside the provider's reuse window",
                grant.pk,
            )
        if not grant.has_secret("refresh_token"):
            if grant.access_token_valid_for(0):
                # Nothing to refresh with, but still usable (OAuth 1.0a tokens, providers
                # that issue no refresh token): serve it until it expires.
                return RefreshOutcome(Result.NOT_NEEDED), grant
            mark_reconnect_required(
                grant,
                seen_version=grant.token_version,
                error="no_refresh_token: the access token expired and cannot be renewed",
                reason="no_refresh_token",
            )
            return RefreshOutcome(Result.RECONNECT_REQUIRED), load_or_none(grant_id)
        require_no_outer_transaction()
        outcome = call_upstream(grant, held, task_may_retry=task_may_retry)
        if in_doubt and outcome.result == Result.REFRESHED:
            # The redo was answered with what the provider issued at the first attempt:
            # its access token may be spent by now, its refresh token is unused. One more
            # refresh, with that one, under this lock, if the caller still needs one.
            # (Revoked or deactivated meanwhile: no call, as for any refresh.)
            redone = load_or_none(grant_id)
            if (
                redone is not None
                and redone.is_active
                and redone.user.is_active
                and needs_refresh(redone, False)
            ):
                outcome = call_upstream(redone, held, task_may_retry=task_may_retry)
        if outcome.result == Result.DATABASE_UNAVAILABLE or not reload:
            return outcome, None  # (the database is away; the response waits in Redis)
        return outcome, load_or_none(grant_id)
