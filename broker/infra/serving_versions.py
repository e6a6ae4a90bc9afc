"""Versions in Redis that let a web process serve a token from its own memory, safely.

The internal API keeps, per process, the grant rows it served and the access rules it
applied (broker.api.grant_lookup, broker.api.rules). Each cached entry carries the stamp of
the versions it was loaded under; a request reads the current stamp in the Redis round
trip it makes anyway (the broker-token check) and uses the entry only when they are equal.

Two scopes:
- `grant_scope(id)`: one grant (its status, tokens, scopes; revocation, refresh, consent).
- `RULES`: everything else a token answer depends on, which changes rarely: access rules,
  users (active or not), group memberships, provider apps, services.

A writer brackets its change (`writing`, or `begin_write` + `end_write`): before it
commits, it bumps the version and registers itself as in flight; after, it bumps again and
leaves. While any writer is in flight, nobody caches nor serves from the cache (a reader
could otherwise load the old row just before the commit and cache it under the new
version). A writer that dies in between blocks caching for WRITE_WINDOW_SECONDS, never
more. A version that is missing (Redis flushed) is set to a random number by the first
reader and nothing is cached until then, so a version counted up again from zero cannot
meet an old entry.

Without Redis nothing is served from a cache: readers go to the database. A writer that
cannot reach Redis commits all the same (the database is the truth) and logs it; caches
then stay wrong for at most MAX_AGE_SECONDS, the age after which every entry is reloaded.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import redis
from django.db import transaction
from redis.client import Pipeline

from broker.infra.redis_connection import KEY_PREFIX, redis_client

log = logging.getLogger(__name__)

RULES = "rules"
WRITE_WINDOW_SECONDS = 60
MAX_AGE_SECONDS = 30.0

Stamp = tuple[bytes, ...]


def grant_scope(grant_id: uuid.UUID | str) -> str:
    return f"grant:{grant_id}"


def _version_key(scope: str) -> str:
    return f"{KEY_PREFIX}serving:v:{scope}"


def _writers_key(scope: str) -> str:
    return f"{KEY_PREFIX}serving:w:{scope}"


# -- readers ------------------------------------------------------------------------------


# One command for all the reads (a pipeline of GET + ZCOUNT per scope costs several times
# its CPU on both sides): per scope its version (nil when missing) and its writers in
# flight, then EXISTS of each extra key, then GET of each key to read (nil when missing).
READ = """
local out = {}
local n = tonumber(ARGV[2])
local last_exists = 2 * n + tonumber(ARGV[3])
for i = 1, n do
  out[2 * i - 1] = redis.call('GET', KEYS[2 * i - 1]) or false
  out[2 * i] = redis.call('ZCOUNT', KEYS[2 * i], ARGV[1], '+inf')
end
for i = 2 * n + 1, #KEYS do
  if i <= last_exists then
    out[#out + 1] = redis.call('EXISTS', KEYS[i])
  else
    out[#out + 1] = redis.call('GET', KEYS[i]) or false
  end
end
return out
"""


def queue_read(
    pipe: Pipeline, scopes: Sequence[str], exists: Sequence[str] = (), get: Sequence[str] = ()
) -> None:
    """Adds the reads of `scopes` (EXISTS of each `exists` key, GET of each `get` key) to
    `pipe` as one command, so all are read at the same instant; its result is a list:
    version and writers of each scope, then 0/1 per `exists` key, then each `get` value."""
    keys = version_keys(scopes)
    pipe.eval(
        READ,
        len(keys) + len(exists) + len(get),
        *keys,
        *exists,
        *get,
        time.time(),
        len(scopes),
        len(exists),
    )


def stamp_of(scopes: Sequence[str], results: Sequence[object]) -> Stamp | None:
    """The stamp the read results give, or None when nothing may be cached or served from
    a cache now (a writer in flight, a version missing)."""
    stamp: list[bytes] = []
    missing = []
    busy = False
    for scope, version, writers in zip(scopes, results[::2], results[1::2], strict=True):
        if writers:
            busy = True
        if not isinstance(version, bytes):
            missing.append(scope)
        else:
            stamp.append(version)
    if missing:
        _seed(missing)
    return None if busy or missing else tuple(stamp)


def _seed(scopes: Sequence[str]) -> None:
    try:
        pipe = redis_client().pipeline(transaction=False)
        for scope in scopes:
            pipe.set(_version_key(scope), secrets.randbits(62), nx=True)
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("serving versions not seeded: %s", type(exc).__name__)


# -- writers ------------------------------------------------------------------------------


# A writer's steps, one command each (per scope: KEYS version, writers; ARGV writer id, now).
BEGIN = """
for i = 1, #KEYS, 2 do
  redis.call('ZREMRANGEBYSCORE', KEYS[i + 1], '-inf', ARGV[2])
  redis.call('ZADD', KEYS[i + 1], ARGV[2] + ARGV[3], ARGV[1])
  redis.call('EXPIRE', KEYS[i + 1], 2 * ARGV[3])
  redis.call('INCR', KEYS[i])
end
"""
END = """
for i = 1, #KEYS, 2 do
  redis.call('INCR', KEYS[i])
  redis.call('ZREM', KEYS[i + 1], ARGV[1])
end
"""


def version_keys(scopes: Sequence[str]) -> list[str]:
    """(version key, writers key) of each scope, in order."""
    return [key for scope in scopes for key in (_version_key(scope), _writers_key(scope))]


def begin_write(*scopes: str) -> str:
    """Before a change commits: bump the versions and register as in flight. Returns the
    writer's id for `end_write`."""
    writer = uuid.uuid4().hex
    keys = version_keys(scopes)
    try:
        redis_client().eval(BEGIN, len(keys), *keys, writer, time.time(), WRITE_WINDOW_SECONDS)
    except redis.RedisError as exc:
        log.warning(
            "serving versions of %s not bumped (%s): cached copies expire within %ss",
            ", ".join(scopes),
            type(exc).__name__,
            MAX_AGE_SECONDS,
        )
    return writer


def end_write(writer: str, *scopes: str) -> None:
    """After the change committed (or rolled back): bump again and leave."""
    keys = version_keys(scopes)
    try:
        redis_client().eval(END, len(keys), *keys, writer)
    except redis.RedisError as exc:
        log.warning(
            "serving versions of %s not settled (%s): no caching for up to %ss",
            ", ".join(scopes),
            type(exc).__name__,
            WRITE_WINDOW_SECONDS,
        )


def queue_end_write(pipe: Pipeline, writer: str, *scopes: str) -> None:
    """`end_write` as one command on a pipeline the caller executes with other commands
    (the refresh engine: with its lock's release); the caller logs a failure."""
    keys = version_keys(scopes)
    pipe.eval(END, len(keys), *keys, writer)


@contextmanager
def writing(*scopes: str) -> Iterator[None]:
    """Wraps a change that commits inside the block (a `transaction.atomic` of its own)."""
    writer = begin_write(*scopes)
    try:
        yield
    finally:
        end_write(writer, *scopes)


def end_after_commit(writer: str, *scopes: str) -> None:
    """`end_write` once the current transaction commits (at once in autocommit mode, where
    the change is already committed). A rollback leaves the writer registered until its
    window ends: caching paused meanwhile, never wrong."""
    transaction.on_commit(lambda: end_write(writer, *scopes))
