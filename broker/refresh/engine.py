"""The refresh engine: keeps OAuth 2.0 access tokens fresh with one upstream call at a time.

Atlassian (and Data Center) rotate refresh tokens: every refresh consumes the token it
sends (RFC 6749 section 6 allows this; RFC 9700 section 4.14.2 recommends it), so two
concurrent refreshes of one grant, or one lost write of a rotated token, kill the grant.
Everything here exists to make that impossible.

Entry points
- `ensure_fresh(grant_id, min_ttl=..., force_refresh=...)`: the API's on-demand path.
- `refresh_grant_now(grant_id, retries_left=...)`: what the Celery task runs for a grant the
  beat claimed (`claim_due_grants`).
Both go through the same single-flight section (`single_flight`), the only code that calls
`broker.providers.oauth2_client.refresh` for a stored grant.

Single flight: a Redis lock plus a fencing token in the database
  Each refresh runs under a Redis lock per grant (`refresh_lock`: SET NX PX with a random
  owner token, released by a script only by its owner, as redis-py's `Lock`; its scripts
  also read what the holder looks at first and announce the release). Its timeout (2 x
  the provider timeout + 10 s) outlasts the HTTP call, which broker.infra.outbound_http
  ends within the provider timeout in total however slowly the provider answers, and the
  write; waiters block on it for at most 2 x the provider timeout, having given their
  database connection back (so that a pool of a few connections serves any number of
  waiters; the holder gives its own back during the provider call). The holder re-reads
  the grant and skips the call when someone else already refreshed. The API's callers
  (`ensure_fresh`) that find the lock held wait for its release, which the holder
  announces on a Redis channel (one listener per process, `wait_for_refresh_in_flight`),
  and share one re-read of the grant: the fresh token, or the failure of the call they
  waited for; they take the lock only if that does not do (a worker's task takes it in
  turn). Every write of a
  refresh's result is a conditional UPDATE on the `token_version` read before the call
  (and `status=active`), so a holder whose lock expired while it was
  stalled can never overwrite newer tokens or resurrect a revoked grant, and a stale
  `invalid_grant` cannot kill a grant someone else refreshed meanwhile.
  Why not a PostgreSQL row lock (`select_for_update`) held across the HTTP call: it pins a
  database connection and an open transaction for up to the provider timeout per refresh,
  and on SQLite (the default database) the only lock is the whole-database write lock, so
  every other write of the site would queue behind one slow provider. Redis is already a
  hard dependency (Celery broker), the lock costs two round trips, and the fence keeps the
  database the single source of truth if Redis loses the lock.
  A lock that cannot be had in time, or an unreachable Redis, is "busy": it never counts
  as an authorization failure (the caller gets ProviderUnavailable, the task retries).

Persist first
  Between receiving a token response and committing it nothing else happens: no network
  call, no task, no audit outside the same transaction (`persist_refresh`, the single
  write). If that write fails, the response is sealed with the key ring (associated data
  naming the grant) into Redis under `refresh-rescue:<grant id>` for ten minutes
  (Atlassian's reuse window), and every later attempt applies it before any upstream call,
  so the consumed refresh token is never sent again after a success. A response without a
  refresh token keeps the stored one (`broker.refresh.schedule.apply_token_response`).

Refreshes in doubt
  A worker killed between the provider's answer and the commit, or an answer that comes
  after BROKER_PROVIDER_TIMEOUT, leaves the provider with tokens the broker never stored:
  the stored access token is already retired upstream, and the stored refresh token
  consumed. So before each upstream call the holder marks the refresh in flight in Redis
  (`refresh-in-flight:<grant id>` = the token_version it read, for the reuse window); only
  an HTTP error answer, which consumed nothing, clears it. A stored access token of that
  version or an older one is never served (`stored_token_in_doubt`, checked by the API in
  the same round trip as the rescue): a request waits for the refresh in flight and takes
  its result; if the holder is gone, its lock lapses and the next holder finding the mark
  for the version it read refreshes at once, presenting the same refresh token again.
  Inside a reuse window (Atlassian's ten minutes) the provider answers with what it issued
  the first time and the grant lives on; a provider without one answers invalid_grant,
  which the grant would have met at its next refresh anyway. That answer's access token
  was issued at the first attempt, whose time the mark keeps: its lifetime counts from
  then, and a token spent meanwhile is refreshed once more under the same lock with the
  unused refresh token that came with it. The beat's claim lease
  (BROKER_REFRESH_CLAIM_TIMEOUT) brings back a grant nobody asks for within the window.

Failure taxonomy (as Vault's oauthapp plugin sorts them, via broker.providers.oauth2_client)
- GrantRejected -> `reconnect_required`, tokens wiped, no next refresh, audit + announce.
- ClientMisconfigured -> ERROR log and `grant.refresh_failed` (reason client_misconfigured)
  for admins; the grant stays active, the current token is served while valid, retried
  with backoff.
- TransientTokenError -> retried with exponential backoff and jitter, honouring
  Retry-After; the current token is served while valid.
Failures count in `failure_count` and `last_error` (code and short text, never a secret).

Claims (the beat)
  `claim_due_grants` selects due grants through the (status, next_refresh_at) index and, in
  the same transaction, marks them claimed: `refresh_enqueued_at = now` and
  `next_refresh_at = now + claim timeout`. Moving `next_refresh_at` is the lease: a claimed
  grant leaves the due range (so the next beat's index scan never wades through claimed
  rows), and comes back by itself when the claim is older than the timeout (a lost task,
  a killed worker). It is the spec'd condition "refresh_enqueued_at is null or older than
  the claim timeout" kept inside the index. On PostgreSQL the selection is
  `FOR UPDATE SKIP LOCKED`, so concurrent beats claim disjoint rows; on SQLite the
  IMMEDIATE transaction serialises them.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from django.conf import settings
from django.core import checks
from django.db import DatabaseError, connection, transaction
from django.db.models import F
from django.utils import timezone
from redis.client import Pipeline

from broker.audit import trail
from broker.crypto.key_ring import DecryptionError
from broker.crypto.sealed_fields import keyring
from broker.infra.redis_connection import redis_client
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
from broker.refresh.grant_statements import (
    grant_with_app_and_user,
    update_and_record_if_current,
)
from broker.refresh.schedule import apply_token_response

log = logging.getLogger(__name__)

LOCK_KEY = "broker:refresh-lock:{grant_id}"
RESCUE_KEY = "broker:refresh-rescue:{grant_id}"
IN_FLIGHT_KEY = "broker:refresh-in-flight:{grant_id}"
# When the first attempt from the marked version was sent (see `mark_in_flight`).
IN_FLIGHT_SINCE_KEY = "broker:refresh-in-flight-since:{grant_id}"
# Atlassian tolerates reuse of a consumed refresh token for ten minutes; a rescued response
# older than that is worthless anyway.
RESCUE_TTL_SECONDS = 600
LOCK_POLL_SECONDS = 0.05
# When no refresh can be had, a stored token is still served while it lasts this long (the
# API's expires_in is in whole seconds).
LAST_RESORT_VALIDITY_SECONDS = 1
SYSTEM_ACTOR = "refresh-engine"


class ReconnectRequired(Exception):
    """The grant is dead (reconnect_required or revoked): the user must consent again."""


class UserDeactivated(Exception):
    """The grant's user is deactivated (`is_active` false): nothing is served or refreshed.
    The grant itself is kept, so reactivating the user restores it."""


class ProviderUnavailable(Exception):
    """No token valid for the requested time, and none can be had right now."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


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


# -- timing ----------------------------------------------------------------------------


def provider_timeout() -> float:
    return float(settings.BROKER_PROVIDER_TIMEOUT)


def lock_timeout() -> float:
    """How long a lock lives: the HTTP call, the write, and a margin."""
    configured = getattr(settings, "BROKER_REFRESH_LOCK_TIMEOUT", None)
    return float(configured) if configured else 2 * provider_timeout() + 10


def lock_wait() -> float:
    """How long a caller waits for another process's refresh before giving up (busy)."""
    return 2 * provider_timeout()


def claim_timeout() -> timedelta:
    return timedelta(seconds=settings.BROKER_REFRESH_CLAIM_TIMEOUT)


def backoff_seconds(failures: int, retry_after: float | None = None) -> int:
    """Exponential backoff with full jitter in its upper half, at least Retry-After.

    Capped (BROKER_REFRESH_BACKOFF_MAX, 5 minutes by default) so that a retry after a
    timeout, whose request the provider may have processed, still falls inside Atlassian's
    ten-minute reuse window.
    """
    base = float(settings.BROKER_REFRESH_BACKOFF_BASE)
    cap = float(settings.BROKER_REFRESH_BACKOFF_MAX)
    ceiling = min(cap, base * 2 ** max(0, failures - 1))
    delay = ceiling / 2 + random.random() * ceiling / 2
    return max(1, math.ceil(max(delay, retry_after or 0)))


# -- Redis: lock and rescue --------------------------------------------------------------


def lock_redis() -> redis.Redis:
    """The shared Redis client, patient enough for the lock and the rescue: losing either
    to a slow Redis would cost a refresh that already reached the provider."""
    return redis_client(socket_timeout=5, connect_timeout=2)


def release_database_connection() -> None:
    """Gives this thread's database connection back (to the pool, on PostgreSQL) before a
    wait of seconds, so that callers waiting on a refresh or a provider never hold the
    connections everyone else needs; the next query takes one again. A connection inside
    a transaction (a test's) is kept: closing it would end the transaction. So is a SQLite
    connection: a file, no server with a connection limit, and reopening it (with its
    settings) cost a tenth of a worker's refresh."""
    if not connection.in_atomic_block and connection.vendor != "sqlite":
        connection.close()


# A grant's refresh lock is a key set with an owner token of its holder's (SET NX PX, as
# redis-py's Lock does), taken and let go by these scripts so that what goes with each costs
# no round trip of its own.
# Taking it, and, once taken, reading what its holder must look at first (the rescued
# response and the in-flight mark, see `single_flight`).
ACQUIRE = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return false
end
return {redis.call('GET', KEYS[2]) or false, redis.call('GET', KEYS[3]) or false}
"""
# Letting it go, only if it is still ours (it may have expired and gone to another), and
# announcing the release to the grant's waiters either way (`wait_for_refresh_in_flight`):
# they wake at once instead of polling; lost, it costs them WAIT_RECHECK_SECONDS.
RELEASE = """
local ours = redis.call('GET', KEYS[1]) == ARGV[1]
if ours then
  redis.call('DEL', KEYS[1])
end
redis.call('PUBLISH', ARGV[2], '')
return ours and 1 or 0
"""


@dataclass(frozen=True)
class HeldLock:
    """A grant's refresh lock while it is held: the rescue's sealed value and the in-flight
    mark as they were when it was taken (None: none), and a pipeline for the Redis commands
    that can wait for its release (metrics), sent with it."""

    rescued: bytes | None
    marked: int | None
    at_release: Pipeline


@contextmanager
def refresh_lock(grant_id: Any, *, wait: float) -> Iterator[HeldLock | None]:
    """Holds the grant's refresh lock; yields None when it could not be had in `wait` s."""
    client = lock_redis()
    key = LOCK_KEY.format(grant_id=grant_id)
    owner = uuid.uuid4().hex
    took = (3, key, *doubt_keys(grant_id), owner, int(lock_timeout() * 1000))
    held = None
    try:
        found = client.eval(ACQUIRE, *took)
        if found is None and wait > 0:
            # Another process is refreshing: wait for it without a database connection.
            release_database_connection()
            deadline = time.monotonic() + wait
            while found is None and time.monotonic() < deadline:
                time.sleep(LOCK_POLL_SECONDS)
                found = client.eval(ACQUIRE, *took)
        if found is not None:
            rescued, marked = found
            marked = None if marked is None else int(marked)
            held = HeldLock(rescued, marked, client.pipeline(transaction=False))
    except redis.RedisError as exc:
        log.warning("refresh lock for grant %s unavailable: %s", grant_id, type(exc).__name__)
    try:
        yield held
    finally:
        if held is not None:
            release(grant_id, key, owner, held.at_release)


def release(grant_id: Any, key: str, owner: str, pipe: Pipeline) -> None:
    """Lets the lock go and announces it, with the commands queued for the release."""
    pipe.eval(RELEASE, 1, key, owner, RELEASED_CHANNEL.format(grant_id=grant_id))
    try:
        *queued, released = pipe.execute(raise_on_error=False)
    except redis.RedisError as exc:
        log.warning("refresh lock for grant %s not released: %s", grant_id, exc)
        return
    if isinstance(released, Exception):
        log.warning("refresh lock for grant %s not released: %s", grant_id, released)
    elif not released:
        # Expired while we held it: someone may have refreshed meanwhile; the token_version
        # fence kept our write from overwriting theirs.
        log.warning("refresh lock for grant %s expired before release", grant_id)
    for failed in (result for result in queued if isinstance(result, Exception)):
        # Metrics lost: counted, never needed for correctness.
        log.warning("grant %s: a command sent with the lock's release failed: %s", grant_id, failed)


# Callers waiting for another's refresh of a grant: one thread per process listens for the
# lock's release (published on this channel by whoever lets the lock go), the others of the
# process wait for its finding.
RELEASED_CHANNEL = "broker:refresh-released:{grant_id}"
# A holder that never announces its release (killed: its lock lapses; or a process of an
# older release during a rolling deploy) is noticed by a look at the lock this often.
WAIT_RECHECK_SECONDS = 0.25


@dataclass(frozen=True)
class RefreshEnded:
    """What the waiters of a process found once the refresh they waited for ended: the
    grant as stored then (None if gone; shared by them: read it, never change it), and
    whether its stored token is in doubt (`stored_token_in_doubt`: then it is not served)."""

    grant: Grant | None
    in_doubt: bool


class _Wait:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.ended: RefreshEnded | None = None


_waits: dict[str, _Wait] = {}
_waits_guard = threading.Lock()


def wait_for_refresh_in_flight(grant_id: Any, *, wait: float) -> RefreshEnded | None:
    """Waits, holding no lock and no database connection, until no refresh of the grant is
    in flight (its lock is free): one thread per process listens for the release
    (`RELEASE` announces it) and reads the grant once it ended, the others of the process wait
    for its finding. None when no refresh was in flight, or one still ran after `wait`
    seconds, or Redis could not tell."""
    key = LOCK_KEY.format(grant_id=grant_id)
    with _waits_guard:
        waiting = _waits.get(key)
        leader = waiting is None
        if waiting is None:
            waiting = _waits[key] = _Wait()
    if not leader:
        release_database_connection()
        return waiting.ended if waiting.done.wait(wait) else None
    try:
        deadline = time.monotonic() + wait
        client = lock_redis()
        if wait <= 0 or not client.exists(key):
            return None
        release_database_connection()
        with client.pubsub(ignore_subscribe_messages=True) as releases:
            # Subscribed before the lock is looked at again: a release in between is seen.
            releases.subscribe(RELEASED_CHANNEL.format(grant_id=grant_id))
            while client.exists(key):
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                releases.get_message(timeout=min(left, WAIT_RECHECK_SECONDS))
        ended = load_or_none(grant_id)
        in_doubt = ended is not None and stored_token_in_doubt(ended)
        waiting.ended = RefreshEnded(ended, in_doubt)
        return waiting.ended
    except redis.RedisError as exc:
        log.warning("grant %s: refresh in flight unknown (%s)", grant_id, type(exc).__name__)
        return None
    finally:
        with _waits_guard:
            _waits.pop(key, None)
        waiting.done.set()


@dataclass(frozen=True)
class Rescue:
    response: TokenResponse
    based_on_version: int
    received_at: datetime
    # When the tokens' lifetimes began, if before received_at (`MarkedInFlight.redo_of`).
    lifetime_from: datetime | None = None

    def __repr__(self) -> str:  # never print tokens
        return f"Rescue(based_on_version={self.based_on_version}, at={self.received_at})"


def rescue_associated_data(grant_id: Any) -> str:
    return f"refresh-rescue:{grant_id}"


def stash_rescue(grant_id: Any, rescue: Rescue) -> bool:
    """Keeps a response whose write failed, sealed, in Redis; False if Redis failed too."""
    payload = json.dumps(
        {
            "access_token": rescue.response.access_token,
            "refresh_token": rescue.response.refresh_token,
            "expires_in": rescue.response.expires_in,
            "scopes": rescue.response.scopes,
            "token_type": rescue.response.token_type,
            "based_on_version": rescue.based_on_version,
            "received_at": rescue.received_at.isoformat(),
            "lifetime_from": (rescue.lifetime_from or rescue.received_at).isoformat(),
        }
    )
    sealed = keyring().encrypt(payload, rescue_associated_data(grant_id))
    try:
        lock_redis().set(RESCUE_KEY.format(grant_id=grant_id), sealed, ex=RESCUE_TTL_SECONDS)
    except redis.RedisError as exc:
        log.critical(
            "grant %s: refreshed tokens could not be stored in the database nor in Redis (%s);"
            " the next refresh will reuse the previous refresh token",
            grant_id,
            type(exc).__name__,
        )
        return False
    return True


def read_rescue(grant_id: Any) -> Rescue | None:
    return unseal_rescue(grant_id, lock_redis().get(RESCUE_KEY.format(grant_id=grant_id)))


def unseal_rescue(grant_id: Any, sealed: bytes | str | None) -> Rescue | None:
    """The rescue of `grant_id` from the value of its key (an unreadable one is dropped)."""
    if sealed is None:
        return None
    try:
        text = sealed.decode() if isinstance(sealed, bytes) else str(sealed)
        data = json.loads(keyring().decrypt(text, rescue_associated_data(grant_id)))
    except (DecryptionError, ValueError) as exc:
        log.error("grant %s: unreadable rescued token response dropped (%s)", grant_id, exc)
        drop_rescue(grant_id)
        return None
    response = TokenResponse(
        access_token=data["access_token"],
        refresh_token=data["refresh_token"],
        expires_in=data["expires_in"],
        scopes=data["scopes"],
        token_type=data["token_type"],
    )
    received_at = datetime.fromisoformat(data["received_at"])
    return Rescue(
        response=response,
        based_on_version=int(data["based_on_version"]),
        received_at=received_at,
        # (absent from the rescues of releases before it was kept)
        lifetime_from=datetime.fromisoformat(data["lifetime_from"])
        if "lifetime_from" in data
        else received_at,
    )


def rescue_pending(grant_id: Any) -> bool:
    """Whether a rescued response waits for this grant. With Redis away there can be no
    refresh anyway; the stored token is then served while valid."""
    try:
        return bool(lock_redis().exists(RESCUE_KEY.format(grant_id=grant_id)))
    except redis.RedisError as exc:
        log.warning("grant %s: cannot check for a rescue (%s)", grant_id, type(exc).__name__)
        return False


def drop_rescue(grant_id: Any) -> None:
    lock_redis().delete(RESCUE_KEY.format(grant_id=grant_id))


def doubt_keys(grant_id: Any) -> tuple[str, str]:
    """The keys `stored_token_in_doubt` reads: (EXISTS of the rescue, GET of the mark)."""
    return RESCUE_KEY.format(grant_id=grant_id), IN_FLIGHT_KEY.format(grant_id=grant_id)


def stored_token_in_doubt(grant: Grant) -> bool:
    """Whether the stored access token of `grant` (as read) may already be retired
    upstream: a rescued response waits, or a refresh from its tokens is in flight or was
    cut short (see "Refreshes in doubt"). One Redis round trip; call it after reading the
    grant, so that a refresh starting later cannot retire what was read before the check.
    With Redis away there can be no refresh anyway: the stored token is then served while
    valid."""
    rescue_key, in_flight_key = doubt_keys(grant.pk)
    pipe = lock_redis().pipeline(transaction=False)
    pipe.exists(rescue_key)
    pipe.get(in_flight_key)
    try:
        rescued, in_flight_from = pipe.execute()
    except redis.RedisError as exc:
        log.warning("grant %s: cannot check for a rescue (%s)", grant.pk, type(exc).__name__)
        return False
    return in_doubt(grant, bool(rescued), in_flight_from)


def in_doubt(grant: Grant, rescued: bool, in_flight_from: bytes | None) -> bool:
    """`stored_token_in_doubt` from the values of `doubt_keys`, read after the grant."""
    # The mark stays after its refresh committed (until it expires): a request that read
    # the grant just before the commit still finds it, for the version it read, and takes
    # the refresh's result instead. Marks from older versions than the one read are spent.
    return rescued or (in_flight_from is not None and int(in_flight_from) >= grant.token_version)


# Marking a refresh from version ARGV[1] in flight at ARGV[2] (epoch seconds) for ARGV[3]
# seconds; a refresh that redoes one in doubt (marked for the same version) keeps the time
# of the first attempt. Returns that time.
MARK_IN_FLIGHT = """
local since = redis.call('GET', KEYS[2])
if not since or redis.call('GET', KEYS[1]) ~= ARGV[1] then
  since = ARGV[2]
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
redis.call('SET', KEYS[2], since, 'EX', ARGV[3])
return since
"""


@dataclass(frozen=True)
class MarkedInFlight:
    """A refresh marked in flight. redo_of: when the refresh in doubt that it redoes (the
    same refresh token, from the same version) was first sent; None for a first attempt.

    A provider answers a refresh token presented again inside its reuse window with what
    it issued the first time: an access token whose lifetime began then, so the broker
    counts it from `redo_of` (the best bound it has), not from the answer. A first
    attempt's token is counted from its answer, as OAuth clients do: a provider issues it
    when it handles the request, which may be long after it was sent (a slow provider)."""

    redo_of: datetime | None


def mark_in_flight(grant_id: Any, seen_version: int) -> MarkedInFlight | None:
    """Before an upstream call; None if Redis cannot take the mark (then no call)."""
    keys = (IN_FLIGHT_KEY.format(grant_id=grant_id), IN_FLIGHT_SINCE_KEY.format(grant_id=grant_id))
    now = repr(time.time())
    try:
        since = lock_redis().eval(MARK_IN_FLIGHT, 2, *keys, seen_version, now, RESCUE_TTL_SECONDS)
    except redis.RedisError as exc:
        log.warning("grant %s: refresh not marked in flight (%s)", grant_id, type(exc).__name__)
        return None
    if since.decode() == now:
        return MarkedInFlight(redo_of=None)
    return MarkedInFlight(redo_of=datetime.fromtimestamp(float(since), tz=UTC))


def clear_in_flight(grant_id: Any) -> None:
    """The provider answered with an error: it consumed nothing, the stored tokens stand.
    (A refresh that stored its result leaves the mark: see `stored_token_in_doubt`.)"""
    try:
        lock_redis().delete(
            IN_FLIGHT_KEY.format(grant_id=grant_id), IN_FLIGHT_SINCE_KEY.format(grant_id=grant_id)
        )
    except redis.RedisError as exc:
        log.warning("grant %s: in-flight mark not cleared (%s)", grant_id, type(exc).__name__)


# -- database writes ---------------------------------------------------------------------


def load(grant_id: Any) -> Grant:
    """The grant with its app and user; raises Grant.DoesNotExist."""
    return grant_with_app_and_user(grant_id)


def load_or_none(grant_id: Any) -> Grant | None:
    try:
        return load(grant_id)
    except Grant.DoesNotExist:
        return None


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


# -- the single-flight section -----------------------------------------------------------


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


# -- on demand (the API) -------------------------------------------------------------------


def require_usable(grant: Grant) -> None:
    """Raises unless tokens may be served and refreshed for this grant."""
    if not grant.is_active:
        raise ReconnectRequired(f"grant is {grant.status}")
    if not grant.user.is_active:
        raise UserDeactivated(f"the user of grant {grant.pk} is deactivated")


def ensure_fresh(
    grant_id: Any,
    *,
    min_ttl: int,
    force_refresh: bool = False,
    refused_version: int | None = None,
    as_read: Grant | None = None,
) -> Grant:
    """The grant, reloaded, with an access token valid for at least `min_ttl` seconds.

    as_read: the grant as the caller read it from the database in this request, which is then
    not read again before waiting for a refresh in flight: a burst of callers on one
    refresh takes no database connection before its wait. When it already does (its token
    lasts, nothing in doubt), it is what is returned, not a reload.

    force_refresh: the token comes from a refresh that completed after this call began.
    refused_version (with force_refresh): the `token_version` of a token the provider just
    refused; a valid token stored since then (another caller's refresh, however recent)
    also does, so a burst of refusals of one token costs one refresh (the proxy's).
    Concurrent callers share one upstream refresh. A caller that finds a refresh
    completed after it began takes that token even if the provider's lifetime is shorter
    than `min_ttl` (refreshing again would not give a longer one), unless it expired.
    When the refresh cannot be had (provider failing, client misconfigured, another refresh
    still busy) and force_refresh was not asked, a stored token that is still valid is
    returned even though it lasts less than `min_ttl`: the caller gets its true expiry, and
    a token that works beats no token.
    Raises Grant.DoesNotExist, ReconnectRequired, UserDeactivated, or ProviderUnavailable
    (no valid token is left and none can be had right now; with force_refresh, whenever no
    fresh token could be had).
    A grant without a refresh token (OAuth 1.0a) is returned as stored while its token is
    valid, even with force_refresh; once expired it becomes reconnect_required.
    Must not run inside transaction.atomic (see require_no_outer_transaction).
    """
    started = timezone.now()
    grant = as_read if as_read is not None else load(grant_id)
    seen_version = grant.token_version
    seen_failures = grant.failure_count

    def refreshed_since_start(candidate: Grant) -> bool:
        return (
            candidate.token_version > seen_version
            and candidate.last_refreshed_at is not None
            and candidate.last_refreshed_at >= started
            # (not expired: a redo of a refresh in doubt may be answered with an old token)
            and candidate.access_token_valid_for(0)
        )

    def replaced_since_refused(candidate: Grant) -> bool:
        return (
            refused_version is not None
            and candidate.token_version > refused_version
            and candidate.access_token_valid_for(min_ttl)
        )

    def satisfied(candidate: Grant) -> bool:
        if refreshed_since_start(candidate) or replaced_since_refused(candidate):
            return True
        return not force_refresh and candidate.access_token_valid_for(min_ttl)

    require_usable(grant)
    if not grant.has_secret("refresh_token") and grant.access_token_valid_for(min_ttl):
        return grant  # cannot be refreshed (OAuth 1.0a, no refresh token): even if forced
    # A rescued response, or a refresh in flight or cut short, means the stored access
    # token may already be replaced upstream (rotation revokes it): never serve it then.
    # (satisfied first: a forced call would read Redis for nothing)
    if satisfied(grant) and not stored_token_in_doubt(grant):
        return grant

    def failed_meanwhile(candidate: Grant) -> bool:
        """The refresh this caller waited for failed: single flight shares its result, so
        the same refresh token does not go upstream again straight away."""
        return candidate.token_version == seen_version and candidate.failure_count > seen_failures

    # Another caller's refresh in flight is waited for without its lock: all its waiters
    # take its token at once when it ends, instead of taking the lock in turn to see it.
    # One wait in all: what waiting for the release took is not waited again for the lock.
    deadline = time.monotonic() + lock_wait()

    def left() -> float:
        return max(0.0, deadline - time.monotonic())

    for last_round in (False, True):
        ended = wait_for_refresh_in_flight(grant_id, wait=left())
        if ended is not None:
            if ended.grant is None:
                raise Grant.DoesNotExist(f"grant {grant_id} is gone")
            require_usable(ended.grant)
            if satisfied(ended.grant) and not ended.in_doubt:
                return ended.grant
        # No refresh in flight, or its result does not do. A refresh another caller began
        # since the look above (its lock taken first) is waited for once more like that,
        # with the others, not by taking its lock in turn after it: each turn re-reads the
        # grant under the lock, one caller after the other, once the answers are due.
        outcome, current = single_flight(
            grant_id,
            needs_refresh=lambda g, in_doubt: (
                (in_doubt or not satisfied(g)) and not failed_meanwhile(g)
            ),
            wait=left() if last_round else 0.0,
        )
        if outcome.result != Result.BUSY:
            break
    if outcome.result == Result.DATABASE_UNAVAILABLE:
        raise ProviderUnavailable("the refreshed token is not stored yet", retry_after=1)
    if current is None:
        raise Grant.DoesNotExist(f"grant {grant_id} is gone")
    require_usable(current)
    if stored_token_in_doubt(current):
        # The refresh this caller waited for timed out, or its holder died and still
        # holds the lock: what is stored may be retired upstream.
        raise ProviderUnavailable(
            f"a refresh of this grant is in doubt ({outcome.result})",
            retry_after=outcome.retry_after or 1,
        )
    if satisfied(current):
        return current
    if not force_refresh and current.access_token_valid_for(LAST_RESORT_VALIDITY_SECONDS):
        return current
    retry_after = outcome.retry_after or 1
    raise ProviderUnavailable(
        f"no access token could be had ({outcome.result})", retry_after=retry_after
    )


# -- scheduled (the worker) -------------------------------------------------------------------


def is_due(grant: Grant, now: datetime) -> bool:
    """Claimed by the beat and not refreshed since, or past its refresh time."""
    if grant.refresh_enqueued_at is not None:
        return True
    return grant.next_refresh_at is not None and grant.next_refresh_at <= now


def refresh_grant_now(grant_id: Any, *, retries_left: int = 0) -> RefreshOutcome:
    """Refreshes a claimed grant unless that already happened (idempotent: a duplicate or
    late task finds the claim cleared and does nothing). `retries_left`: how many more
    times the task may retry itself; `task_retry_in` in the outcome says when it should."""
    outcome, _ = single_flight(
        grant_id,
        needs_refresh=lambda g, in_doubt: in_doubt or is_due(g, timezone.now()),
        task_may_retry=retries_left > 0,
        reload=False,
    )
    if outcome.result in (Result.BUSY, Result.DATABASE_UNAVAILABLE) and retries_left > 0:
        # The claim stays (its lease runs out on its own if these retries are lost too).
        return RefreshOutcome(outcome.result, outcome.retry_after, outcome.retry_after or 1)
    return outcome


def claim_due_grants(
    *,
    on_claimed: Callable[[list[str]], None],
    now: datetime | None = None,
    batch_size: int | None = None,
) -> list[str]:
    """Claims up to `batch_size` due grants (oldest first) and calls `on_claimed(ids)` once
    the claim is committed. See the module docstring for the lease."""
    now = now or timezone.now()
    batch_size = batch_size or settings.BROKER_REFRESH_BATCH_SIZE
    # Grants of deactivated users are left as they are (not refreshed, not cleared): once
    # the user is reactivated they are due, and refreshed, at the next beat.
    due = Grant.objects.filter(
        status=Grant.Status.ACTIVE, next_refresh_at__lte=now, user__is_active=True
    )
    with transaction.atomic():
        candidates = due.order_by("next_refresh_at").values_list("pk", flat=True)
        if connection.features.has_select_for_update_skip_locked:
            # Lock the grant rows only (not the users joined for is_active).
            candidates = candidates.select_for_update(skip_locked=True, of=("self",))
        ids = [str(pk) for pk in candidates[:batch_size]]
        if ids:
            due.filter(pk__in=ids).update(
                refresh_enqueued_at=now, next_refresh_at=now + claim_timeout()
            )
            transaction.on_commit(lambda: on_claimed(ids))
    return ids


def claim_now(grant_ids: list[str], *, on_claimed: Callable[[list[str]], None]) -> list[str]:
    """Claims these grants for refresh whether due or not (an admin's "refresh now"), as the
    beat claims due ones, so that their task refreshes them once; active grants holding a
    refresh token only. Calls `on_claimed(ids)` once the claim is committed."""
    now = timezone.now()
    refreshable = Grant.objects.filter(pk__in=grant_ids, status=Grant.Status.ACTIVE).exclude(
        refresh_token_sealed=""
    )
    with transaction.atomic():
        ids = [str(pk) for pk in refreshable.values_list("pk", flat=True)]
        if ids:
            refreshable.filter(pk__in=ids).update(
                refresh_enqueued_at=now, next_refresh_at=now + claim_timeout()
            )
            transaction.on_commit(lambda: on_claimed(ids))
    return ids


# -- start-up checks ------------------------------------------------------------------------


def check_timing(**kwargs: Any) -> list[checks.CheckMessage]:
    """The refresh lock must outlast the provider call it covers (whose total deadline is
    BROKER_PROVIDER_TIMEOUT), or a second refresh starts while the first is in flight; the
    Celery visibility timeout and the claim timeout must outlast the lock, or a slow
    refresh's task is handed to a second worker, or re-claimed, meanwhile."""
    errors: list[checks.CheckMessage] = []
    if lock_timeout() <= provider_timeout():
        errors.append(
            checks.Error(
                f"BROKER_REFRESH_LOCK_TIMEOUT ({lock_timeout():g}s) must exceed "
                f"BROKER_PROVIDER_TIMEOUT ({provider_timeout():g}s), the longest a provider "
                "call can take",
                id="broker.E103",
            )
        )
    visibility = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("visibility_timeout", 3600)
    if visibility <= lock_timeout():
        errors.append(
            checks.Error(
                f"Celery visibility_timeout ({visibility}s) must exceed the refresh lock "
                f"timeout ({lock_timeout():.0f}s)",
                id="broker.E101",
            )
        )
    if claim_timeout().total_seconds() <= lock_timeout():
        errors.append(
            checks.Warning(
                "BROKER_REFRESH_CLAIM_TIMEOUT should exceed the refresh lock timeout "
                f"({lock_timeout():.0f}s), or slow refreshes get claimed twice",
                id="broker.W102",
            )
        )
    return errors
