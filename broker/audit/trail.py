"""The one way to write the audit log. Callers pass identifiers, never tokens or secrets.

`record()` inserts at once. `record_soon()`, with the same arguments, is for hot paths
(the internal API): it appends the event to a Redis list in one round trip, and
`flush_buffer()` (a Celery beat task, every few seconds) moves buffered events into
AuditEvent in bulk. No event is lost: if Redis cannot take it (down, or the buffer is
full), the event is inserted directly; a flush removes events from the buffer only after
their rows are committed (a crash in between writes them twice rather than never).

Much of what is recorded comes from unauthenticated callers (a claimed client id, a
parameter name), so every value is made storable on every database and bounded in size
before it is recorded. An event that still cannot be stored is moved by the flusher to a
dead-letter list (DEAD_LETTER_KEY, counted in /metrics) so it never blocks the others.
"""

from __future__ import annotations

import functools
import json
import logging
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, ParamSpec

import redis
from celery import shared_task
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import DataError, IntegrityError, transaction
from django.http import HttpRequest
from django.utils import timezone
from redis.exceptions import LockError

from broker.infra.client_address import client_ip
from broker.infra.redis_connection import KEY_PREFIX, redis_client
from broker.models import AuditEvent
from broker.ops import metrics

ActorType = AuditEvent.ActorType
Outcome = AuditEvent.Outcome

BUFFER_KEY = f"{KEY_PREFIX}audit:buffer"
DEAD_LETTER_KEY = f"{KEY_PREFIX}audit:dead-letter"
DEAD_LETTER_MAX = 10_000  # the newest unstorable events kept for an operator to inspect
FLUSH_LOCK_KEY = f"{KEY_PREFIX}audit:flush-lock"
FLUSH_LOCK_SECONDS = 60
FLUSH_BATCH = 1000
# Bounds of what one event may hold: a caller cannot make the broker store megabytes.
DETAIL_TEXT_LIMIT = 500
DETAIL_ITEMS_LIMIT = 100
DETAIL_DEPTH_LIMIT = 4
# Errors that mean "this event cannot be stored", as opposed to "the database is down"
# (OperationalError and others), which leaves the events in the buffer for the next flush.
# ValueError covers UnicodeEncodeError and NUL refused by psycopg; TypeError and KeyError
# a malformed buffered event.
UNSTORABLE = (DataError, IntegrityError, ValueError, TypeError, KeyError)

# RPUSH only while the buffer holds fewer than ARGV[2] events: check and push in one step.
PUSH_IF_ROOM = """
if redis.call('LLEN', KEYS[1]) < tonumber(ARGV[2]) then
  return redis.call('RPUSH', KEYS[1], ARGV[1])
end
return 0
"""

log = logging.getLogger(__name__)


def _text(value: str, limit: int) -> str:
    """What a text column can hold on every database: valid UTF-8 (a lone surrogate is
    written as its escape), no NUL (PostgreSQL), at most `limit` characters."""
    storable = (
        value[: limit + 1]
        .encode("utf-8", "backslashreplace")
        .decode("utf-8")
        .replace("\x00", "\\x00")
    )
    return storable if len(storable) <= limit else storable[: limit - 1] + "…"


def _clean(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return _text(value, DETAIL_TEXT_LIMIT)
    if depth >= DETAIL_DEPTH_LIMIT and isinstance(value, dict | list | tuple):
        return "…"
    if isinstance(value, dict):
        items = list(value.items())[:DETAIL_ITEMS_LIMIT]
        return {_text(str(k), DETAIL_TEXT_LIMIT): _clean(v, depth + 1) for k, v in items}
    if isinstance(value, list | tuple):
        return [_clean(v, depth + 1) for v in value[:DETAIL_ITEMS_LIMIT]]
    return value


def event_fields(
    action: str,
    *,
    actor_type: str,
    actor: str = "",
    outcome: str = Outcome.SUCCESS,
    grant_id: uuid.UUID | str | None = None,
    subject_user: str = "",
    provider: str = "",
    service: str = "",
    scopes: Iterable[str] = (),
    request: HttpRequest | None = None,
    **detail: Any,
) -> dict[str, Any]:
    """One event's columns: what `record()` and `record_soon()` take."""
    # Callers may pass what a client sent (a claimed client id, a username): keep every
    # value storable, so one odd event cannot block the buffer's bulk insert.
    return {
        "at": timezone.now(),
        "action": _text(action, 64),
        "actor_type": actor_type,
        "actor": _text(actor, 255),
        "outcome": outcome,
        "grant_id": grant_id,
        "subject_user": _text(subject_user, 150),
        "provider": _text(provider, 64),
        "service": _text(service, 64),
        "scopes": _clean(list(scopes)),
        "client_ip": client_ip(request),
        "detail": _clean(detail),
    }


P = ParamSpec("P")


def _taking(
    build: Callable[P, dict[str, Any]],
) -> Callable[[Callable[[dict[str, Any]], None]], Callable[P, None]]:
    """A writer of events called with `build`'s arguments (one signature for both writers,
    checked by mypy); it receives what `build` made of them."""

    def decorate(write: Callable[[dict[str, Any]], None]) -> Callable[P, None]:
        @functools.wraps(write)
        def call(*args: P.args, **kwargs: P.kwargs) -> None:
            write(build(*args, **kwargs))

        return call

    return decorate


@_taking(event_fields)
def record(fields: dict[str, Any]) -> None:
    """Inserts the event at once, in the caller's transaction."""
    AuditEvent.objects.create(**fields)


@_taking(event_fields)
def record_soon(fields: dict[str, Any]) -> None:
    """Buffers the event in Redis (one round trip) for `flush_buffer()`; inserts it at once
    when Redis cannot take it."""
    if not _buffered(fields):
        AuditEvent.objects.create(**fields)


def _buffered(fields: dict[str, Any]) -> bool:
    """Appends the event to the buffer; False if Redis is down or the buffer is full (the
    flusher is behind): the caller then inserts it, which costs more but loses nothing."""
    try:
        pushed = redis_client().register_script(PUSH_IF_ROOM)(
            keys=[BUFFER_KEY],
            args=[json.dumps(fields, cls=DjangoJSONEncoder), settings.BROKER_AUDIT_BUFFER_MAX],
        )
    except redis.RedisError:
        log.warning("audit buffer unavailable; writing %s directly", fields["action"])
        pushed = 0
    if not pushed:
        metrics.count_audit_detour("written_directly")
    return bool(pushed)


def _from_buffer(raw: bytes | str) -> AuditEvent:
    fields = json.loads(raw)
    at = datetime.fromisoformat(fields.pop("at"))
    return AuditEvent(at=at, **fields)


def _insert(raw_events: list[bytes | str]) -> list[bytes | str]:
    """Stores the buffered events; returns those that cannot be stored (poison).

    Bulk insert; if the batch fails on a bad event, row by row so that only that event is
    set aside instead of the whole buffer being stuck behind it. A database that is down
    raises other errors, which propagate: the events stay in the buffer."""
    try:
        events = [_from_buffer(raw) for raw in raw_events]
        with transaction.atomic():
            AuditEvent.objects.bulk_create(events)
        return []
    except UNSTORABLE:
        log.warning("audit batch insert failed on a bad event; inserting events one by one")
    poison: list[bytes | str] = []
    for raw in raw_events:
        try:
            event = _from_buffer(raw)
            with transaction.atomic():
                event.save()
        except UNSTORABLE:
            log.exception("an audit event cannot be stored; moved to %s", DEAD_LETTER_KEY)
            poison.append(raw)
    return poison


def flush_buffer(batch: int = FLUSH_BATCH) -> int:
    """Moves buffered events into the database; returns how many were stored.

    One flusher at a time: the lock is a redis-py Lock, released only by its owner (an
    expired lock taken by another flusher is theirs, not ours to delete)."""
    client = redis_client()
    lock = client.lock(FLUSH_LOCK_KEY, timeout=FLUSH_LOCK_SECONDS)
    if not lock.acquire(blocking=False):
        return 0
    written = 0
    try:
        while True:
            raw_events = client.lrange(BUFFER_KEY, 0, batch - 1)
            if not raw_events:
                break
            poison = _insert(raw_events)
            pipe = client.pipeline(transaction=True)
            if poison:
                pipe.rpush(DEAD_LETTER_KEY, *poison)
                pipe.ltrim(DEAD_LETTER_KEY, -DEAD_LETTER_MAX, -1)
            # Producers only append at the tail, so the head we read is still the head.
            pipe.ltrim(BUFFER_KEY, len(raw_events), -1)
            pipe.execute()
            if poison:
                metrics.count_audit_detour("set_aside", len(poison))
            written += len(raw_events) - len(poison)
            # A long backlog (after an outage) must not outlive the lock: another flusher
            # would read the same head and insert it twice. Raises if the lock was lost.
            lock.extend(FLUSH_LOCK_SECONDS, replace_ttl=True)
    except LockError:
        log.warning("audit flush lock lost (expired); stopping this flush")
    finally:
        try:
            lock.release()
        except LockError:
            pass  # expired, perhaps taken by another flusher since: theirs to release
    return written


@shared_task(name="broker.audit.flush_buffer", ignore_result=True, quiet_when_idle=True)
def flush_buffer_task() -> int:
    return flush_buffer()


def service_event(
    action: str, client_id: str, *, outcome: str = Outcome.SUCCESS, **fields: Any
) -> None:
    """A service's request or its refusal, from the internal API's hot path (buffered)."""
    record_soon(
        action,
        actor_type=ActorType.SERVICE,
        actor=client_id,
        service=client_id,
        outcome=outcome,
        **fields,
    )
