"""A grant's refresh lock: taking it, letting it go, and waiting for another's release.

Each refresh runs under a Redis lock per grant (`refresh_lock`: SET NX PX with a random
owner token, released by a script only by its owner, as redis-py's `Lock`; its scripts
also read what the holder looks at first and announce the release). Its timeout (2 x the
provider timeout + 10 s) outlasts the HTTP call, which broker.infra.outbound_http ends
within the provider timeout in total however slowly the provider answers, and the write;
waiters block on it for at most 2 x the provider timeout, having given their database
connection back (so that a pool of a few connections serves any number of waiters; the
holder gives its own back during the provider call). The API's callers that find the lock
held wait for its release, which the holder announces on a Redis channel (one listener per
process, `wait_for_refresh_in_flight`), and share one re-read of the grant.
A lock that cannot be had in time, or an unreachable Redis, is "busy": it never counts as
an authorization failure.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis
from django.db import connection
from redis.client import Pipeline

from broker.models import Grant
from broker.refresh.doubt_marks import doubt_keys, stored_token_in_doubt
from broker.refresh.grant_statements import load_or_none
from broker.refresh.redis_keys import lock_key, lock_redis, released_channel
from broker.refresh.timing import lock_timeout

log = logging.getLogger(__name__)

LOCK_POLL_SECONDS = 0.05


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
    key = lock_key(grant_id)
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
    pipe.eval(RELEASE, 1, key, owner, released_channel(grant_id))
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
# process wait for its finding (the channel: `released_channel`).
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
    key = lock_key(grant_id)
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
            releases.subscribe(released_channel(grant_id))
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
