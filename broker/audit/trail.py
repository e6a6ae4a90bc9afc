"""The one way to write the audit log. Callers pass identifiers, never tokens or secrets.

`record()` inserts at once. `record_soon()`, with the same arguments, is for hot paths (the
internal API): no database round trip per event. Each buffered event is kept twice, in two
failure domains:
- in a Redis list (one round trip, or a command in the caller's pipeline: `queue_push`),
  which `flush_buffer()` (a Celery beat task, every few seconds) moves into AuditEvent in
  bulk, removing events only after their rows are committed; survives the recording
  process being killed;
- in the recording process's memory, which a thread of that process writes every
  BROKER_AUDIT_COPY_SECONDS (`write_local_copy`); survives Redis losing its data (a flush,
  a restart without persistence, a failover).
Both inserts ignore rows already there: every event carries a unique `event_id`, so an
event is stored once however many copies (or retried flushes) reach the database. If Redis
cannot take an event (down, or the buffer is full), it is inserted directly.

Much of what is recorded comes from unauthenticated callers (a claimed client id, a
parameter name), so every value is made storable on every database and bounded in size
before it is recorded. An event that still cannot be stored is moved by the flusher to a
dead-letter list (DEAD_LETTER_KEY, counted in /metrics) so it never blocks the others.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, ParamSpec

import redis
from celery import shared_task
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import DataError, IntegrityError, connection, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.http import HttpRequest
from django.utils import timezone
from redis.exceptions import LockError

from broker.infra.client_address import client_ip
from broker.infra.json_template import JsonTemplate
from broker.infra.redis_connection import KEY_PREFIX, redis_client
from broker.infra.request_id import current_request_id
from broker.infra.shared_round_trip import shared_round_trip
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
# The in-memory copy holds at most this many events (the newest): a database away for long
# leaves the rest to the Redis buffer.
LOCAL_COPY_MAX = 50_000
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
    if len(value) <= limit and value.isascii() and "\x00" not in value:
        return value  # the usual case (identifiers, names), without the copies below
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
    """One event's columns: what `record()` and `record_soon()` take. An event recorded
    while a request is served names it: `detail["request_id"]` (broker.infra.request_id),
    the id on the request's log line and in the X-Request-ID of its upstream calls."""
    request_id = current_request_id()
    if request_id is not None:
        detail["request_id"] = request_id
    # Callers may pass what a client sent (a claimed client id, a username): keep every
    # value storable, so one odd event cannot block the buffer's bulk insert.
    return {
        "event_id": str(uuid.uuid4()),
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


def _json_ready(event: dict[str, Any]) -> dict[str, Any]:
    """An event made by `event_fields` with the two values json cannot write itself
    written here: the encoder's fallback for them cost as much as the rest of the event
    (which the token fetch writes for every answer: `ServiceEvent`)."""
    ready = {**event, "at": event["at"].isoformat()}
    if ready["grant_id"] is not None:
        ready["grant_id"] = str(ready["grant_id"])
    return ready


def event_json(event: dict[str, Any]) -> str:
    """An event made by `event_fields` as JSON: what the buffer holds, and what
    `json_insert` reads into a row."""
    return json.dumps(_json_ready(event), cls=DjangoJSONEncoder)


def store(event: dict[str, Any]) -> None:
    """Inserts an event made by `event_fields` at once, in the caller's transaction."""
    AuditEvent.objects.create(**event)


@_taking(event_fields)
def record(fields: dict[str, Any]) -> None:
    """Inserts the event at once, in the caller's transaction."""
    store(fields)


@_taking(event_fields)
def record_soon(fields: dict[str, Any]) -> None:
    """Buffers the event in Redis (and the process's own copy) for `flush_buffer()`;
    inserts it at once when Redis cannot take it."""
    raw = event_json(fields)
    try:
        (pushed,) = shared_round_trip().execute(lambda pipe: queue_push(pipe, raw))
    except redis.RedisError:
        log.warning("audit buffer unavailable; writing %s directly", fields["action"])
        pushed = 0
    pushed_or_written(raw, pushed)


def queue_push(pipe: redis.client.Pipeline, raw: str) -> None:
    """Queues the buffer push of one event (`raw`: its JSON, as `record_soon` builds it) on
    the caller's pipeline, so that the event costs no round trip of its own. Once the
    pipeline ran, the caller must pass the push's result to `pushed_or_written`."""
    pipe.eval(PUSH_IF_ROOM, 1, BUFFER_KEY, raw, settings.BROKER_AUDIT_BUFFER_MAX)


def pushed_or_written(raw: str, pushed: int) -> None:
    """After the push: keeps the process's own copy of a buffered event, or, when Redis did
    not take it (down: pushed 0 too, or the buffer full because the flusher is behind),
    inserts it directly: one insert costs more than a push, but loses nothing."""
    if pushed:
        _local.keep(raw)
        return
    metrics.count_audit_detour("written_directly")
    _from_buffer(raw).save(force_insert=True)


def _from_buffer(raw: bytes | str) -> AuditEvent:
    fields = json.loads(raw)
    at = datetime.fromisoformat(fields.pop("at"))
    return AuditEvent(at=at, **fields)


def _insert(raw_events: list[bytes | str]) -> list[bytes | str]:
    """Stores the buffered events, but not those already stored (the other copy, or an
    earlier flush that failed after its insert); returns those that cannot be stored
    (poison).

    Bulk insert; if the batch fails on a bad event, row by row so that only that event is
    set aside instead of the whole buffer being stuck behind it. A database that is down
    raises other errors, which propagate: the events stay in the buffer."""
    try:
        _store(raw_events)
        return []
    except UNSTORABLE:
        log.warning("audit batch insert failed on a bad event; inserting events one by one")
    poison: list[bytes | str] = []
    for raw in raw_events:
        try:
            event = _from_buffer(raw)  # the model's defaults fill what an event lacks
            with transaction.atomic():
                AuditEvent.objects.bulk_create([event], ignore_conflicts=True)
        except UNSTORABLE:
            log.exception("an audit event cannot be stored; moved to %s", DEAD_LETTER_KEY)
            poison.append(raw)
    return poison


def _store(raw_events: list[bytes | str]) -> None:
    """One insert of the batch, skipping events already stored; all or none."""
    with transaction.atomic():
        if connection.vendor == "postgresql":
            _insert_as_json(raw_events)
        else:
            events = [_from_buffer(raw) for raw in raw_events]
            AuditEvent.objects.bulk_create(events, ignore_conflicts=True)


def _insert_as_json(raw_events: list[bytes | str]) -> None:
    """PostgreSQL: the batch as one JSON array that the server reads into rows itself.
    Model instances through bulk_create cost the flusher about 0.1 ms of CPU per event,
    as much as the token fetch that recorded it spent on the event; this, a few
    microseconds. An event the server cannot store fails the whole statement."""
    batch = ",".join(raw.decode() if isinstance(raw, bytes) else raw for raw in raw_events)
    with connection.cursor() as cursor:
        cursor.execute(f"{json_insert()} ON CONFLICT (event_id) DO NOTHING", [f"[{batch}]"])


def json_insert(on: BaseDatabaseWrapper = connection) -> str:
    """PostgreSQL: an INSERT of the events in its one parameter, a JSON array of events
    whose keys are the columns (`event_json`), for the flusher and for statements that
    write an event with their own change (broker.refresh.grant_statements)."""
    fields = [f for f in AuditEvent._meta.concrete_fields if not f.primary_key]
    columns = ", ".join(f.column for f in fields)
    record = ", ".join(f"{f.column} {f.db_type(on)}" for f in fields)
    table = AuditEvent._meta.db_table  # names of ours; the events are a parameter
    return (
        f"INSERT INTO {table} ({columns}) SELECT {columns} "  # noqa: S608
        f"FROM jsonb_to_recordset(%s::jsonb) AS event({record})"
    )


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


class LocalCopy:
    """This process's copy of the events it buffered, as a safety net for the buffer.

    Each event is held BROKER_AUDIT_COPY_SECONDS, longer than the buffer's flusher takes to
    store it; then the copy's thread looks its id up and inserts it only if the flusher did
    not (the buffer lost it). Normally that is one lookup per batch and no second insert:
    inserting every event twice cost the web processes a fifth of a token fetch's CPU
    (benchmarks/README.md). Held that long, the events are packed once a second, one
    compressed block per second: a few seconds of a busy process's events as strings were
    megabytes.

    The thread starts with the first event kept (in each process: a forked child starts
    its own, with an empty copy) and is a daemon; what is still held at a normal exit is
    written by an atexit hook. A process killed outright loses its copy: the Redis buffer
    still holds those events."""

    WAKE_SECONDS = 1.0

    def __init__(self, *, writer_thread: bool = True) -> None:
        self._lock = threading.Lock()
        self._fresh: list[str] = []  # kept since the last packing
        # (when packed, on the monotonic clock; how many; the events, one JSON per line,
        # zlib-compressed)
        self._packed: deque[tuple[float, int, bytes]] = deque()
        self._held = 0
        self._pid = 0
        self._writer_thread = writer_thread

    def keep(self, raw: str) -> None:
        if float(settings.BROKER_AUDIT_COPY_SECONDS) <= 0:
            return
        with self._lock:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                self._clear()  # the parent's, which the parent writes itself
                if self._writer_thread:
                    self._start_writer()
            self._fresh.append(raw)
            self._held += 1
            while self._held > LOCAL_COPY_MAX and self._packed:
                self._held -= self._packed.popleft()[1]  # the oldest: the buffer has them

    def _clear(self) -> None:
        self._fresh, self._held = [], 0
        self._packed.clear()

    def _pack(self) -> None:
        with self._lock:
            fresh, self._fresh = self._fresh, []
        if fresh:
            # JSON as json.dumps writes it holds no raw newline: one event per line.
            block = zlib.compress("\n".join(fresh).encode(), 1)
            with self._lock:
                self._packed.append((time.monotonic(), len(fresh), block))

    def _start_writer(self) -> None:
        def run() -> None:
            while True:
                time.sleep(self.WAKE_SECONDS)
                try:
                    self.write(settled_only=True)
                except Exception as exc:  # noqa: BLE001 - the thread must outlive any failure
                    # Every second while the database is away: one line, no traceback.
                    log.warning("audit copy not written (%s); kept", type(exc).__name__)
                finally:
                    # Back to the pool: the request threads need the connections.
                    connection.close()

        threading.Thread(target=run, name="audit-copy-writer", daemon=True).start()
        atexit.register(self.write_at_exit)

    def write_at_exit(self) -> None:
        try:
            self.write()
        except Exception:  # noqa: BLE001 - the buffer's flusher still has them
            log.warning("audit copy not written at exit", exc_info=True)

    def discard(self) -> None:
        """Forgets the copy, as a process killed outright does."""
        with self._lock:
            self._clear()

    def write(self, *, settled_only: bool = False) -> int:
        """Stores the events held (`settled_only`: those held BROKER_AUDIT_COPY_SECONDS)
        that are not stored yet; returns how many were checked. On a database error they
        are held for the next attempt."""
        self._pack()
        cutoff = time.monotonic() - float(settings.BROKER_AUDIT_COPY_SECONDS)
        due: list[tuple[float, int, bytes]] = []
        with self._lock:
            while self._packed and (not settled_only or self._packed[0][0] <= cutoff):
                due.append(self._packed.popleft())
                self._held -= due[-1][1]
        if not due:
            return 0
        raw_events = [
            raw for _, _, block in due for raw in zlib.decompress(block).decode().split("\n")
        ]
        try:
            for start in range(0, len(raw_events), FLUSH_BATCH):
                missing = _not_stored(raw_events[start : start + FLUSH_BATCH])
                if missing:
                    # Unstorable events are dropped here: the buffer's flusher sets them aside.
                    _insert(missing)  # type: ignore[arg-type]
        except Exception:
            with self._lock:
                self._packed.extendleft(reversed(due))
                self._held += sum(count for _, count, _ in due)
            raise
        return len(raw_events)


def _not_stored(raw_events: list[str]) -> list[str]:
    """Those of the buffered events that have no row yet (one lookup by their ids)."""
    by_id: dict[str, str] = {}
    unreadable = []
    for raw in raw_events:
        try:
            by_id[_event_id(raw)] = raw
        except (ValueError, KeyError, TypeError):
            unreadable.append(raw)  # _insert sets it aside
    ids = list(by_id)
    if connection.vendor == "postgresql":
        # The ids as one array literal: psycopg writes a list parameter element by element
        # in Python, which cost more than the rest of the check.
        table = AuditEvent._meta.db_table  # a name of ours; the ids are a parameter
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT event_id::text FROM {table} WHERE event_id = ANY(%s::uuid[])",  # noqa: S608
                ["{" + ",".join(ids) + "}"],
            )
            stored = [event_id for (event_id,) in cursor.fetchall()]
    else:
        # Padded to a power of two (repeating an id): the driver keeps every distinct
        # query text it parsed, and one of some hundred ids per second and process, each
        # count a new text, held megabytes.
        ids += ids[:1] * ((1 << (len(ids) - 1).bit_length()) - len(ids))
        stored = list(
            AuditEvent.objects.filter(event_id__in=ids).values_list("event_id", flat=True)
        )
    for event_id in stored:
        by_id.pop(str(event_id), None)
    return list(by_id.values()) + unreadable


# How every buffered event starts (event_fields puts its id first; json.dumps writes it so).
_ID_PREFIX = '{"event_id": "'
_ID_END = len(_ID_PREFIX) + 36


def _event_id(raw: str) -> str:
    """The buffered event's id, read without parsing the whole event when it can be."""
    if raw.startswith(_ID_PREFIX) and raw[_ID_END : _ID_END + 1] == '"':
        return str(uuid.UUID(raw[len(_ID_PREFIX) : _ID_END]))
    return str(uuid.UUID(str(json.loads(raw)["event_id"])))


_local = LocalCopy()


def write_local_copy() -> int:
    """Stores what this process's copy holds and the database lacks, now, however long
    it was held (its thread waits BROKER_AUDIT_COPY_SECONDS); returns how many events it
    held."""
    return _local.write()


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


class ServiceEvent:
    """A service's event for the internal API's hot path, built and made storable once.
    `json_for` writes it for one request: a new event id, the time and the client's
    address each time, so one built event can be recorded again for each answer that
    repeats it (broker.api.warm_path)."""

    def __init__(self, fields: dict[str, Any]) -> None:
        # Plain JSON values, as `JsonTemplate.fill` takes them.
        detail = json.loads(json.dumps(fields["detail"], cls=DjangoJSONEncoder))
        detail.pop("request_id", None)  # the request that built it; each use has its own
        self._detail: dict[str, Any] = detail
        self._json = JsonTemplate(_json_ready(fields), ("event_id", "at", "client_ip", "detail"))

    def json_for(self, request: HttpRequest | None) -> str:
        """The event as the buffer holds it (as `event_json` writes it): push it on the
        caller's pipeline (`queue_push`), then pass it, with the push's result, to
        `pushed_or_written`."""
        return self._json.fill(
            event_id=str(uuid.uuid4()),
            at=timezone.now().isoformat(),
            client_ip=client_ip(request),
            detail=self._detail_now(),
        )

    def _detail_now(self) -> dict[str, Any]:
        request_id = current_request_id()
        return self._detail if request_id is None else {**self._detail, "request_id": request_id}


def service_event_of(
    action: str, client_id: str, *, outcome: str = Outcome.SUCCESS, **fields: Any
) -> ServiceEvent:
    """`service_event`'s event, to be written by its `json_for`."""
    return ServiceEvent(
        event_fields(
            action,
            actor_type=ActorType.SERVICE,
            actor=client_id,
            service=client_id,
            outcome=outcome,
            **fields,
        )
    )
