"""The one way to write the audit log. Callers pass identifiers, never tokens or secrets.

`record()` inserts at once. `record_soon()` is for hot paths (the internal API): it appends
the event to a Redis list in one round trip, and `flush_buffer()` (a Celery beat task, every
few seconds) moves buffered events into AuditEvent in bulk. No event is lost: if Redis
cannot take it, the event is inserted directly; a flush removes events from the buffer only
after their rows are committed (a crash in between writes them twice rather than never).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import redis
from celery import shared_task
from django.core.serializers.json import DjangoJSONEncoder
from django.db import DataError, IntegrityError, transaction
from django.http import HttpRequest
from django.utils import timezone

from broker.models import AuditEvent
from broker.redis_connection import KEY_PREFIX, redis_client

ActorType = AuditEvent.ActorType
Outcome = AuditEvent.Outcome

BUFFER_KEY = f"{KEY_PREFIX}audit:buffer"
FLUSH_LOCK_KEY = f"{KEY_PREFIX}audit:flush-lock"
FLUSH_BATCH = 1000

log = logging.getLogger(__name__)


def client_ip(request: HttpRequest | None) -> str | None:
    """The peer address Django saw (a proxy in front must be trusted to set REMOTE_ADDR)."""
    if request is None:
        return None
    return request.META.get("REMOTE_ADDR") or None


def _text(value: str, limit: int) -> str:
    """What a text column can hold on every database: no NUL (PostgreSQL), within its length."""
    return value.replace("\x00", "\\x00")[:limit]


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\\x00")
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _fields(
    action: str,
    actor_type: str,
    actor: str,
    outcome: str,
    grant_id: uuid.UUID | str | None,
    subject_user: str,
    provider: str,
    service: str,
    scopes: Iterable[str],
    request: HttpRequest | None,
    detail: dict[str, Any],
) -> dict[str, Any]:
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


def record(
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
) -> AuditEvent:
    return AuditEvent.objects.create(
        **_fields(
            action,
            actor_type,
            actor,
            outcome,
            grant_id,
            subject_user,
            provider,
            service,
            scopes,
            request,
            detail,
        )
    )


def record_soon(
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
) -> None:
    """Like `record()`, but buffered in Redis; written to the database by `flush_buffer()`."""
    fields = _fields(
        action,
        actor_type,
        actor,
        outcome,
        grant_id,
        subject_user,
        provider,
        service,
        scopes,
        request,
        detail,
    )
    try:
        redis_client().rpush(BUFFER_KEY, json.dumps(fields, cls=DjangoJSONEncoder))
    except redis.RedisError:
        log.warning("audit buffer unavailable; writing %s directly", action)
        AuditEvent.objects.create(**fields)


def _from_buffer(raw: bytes | str) -> AuditEvent:
    fields = json.loads(raw)
    at = datetime.fromisoformat(fields.pop("at"))
    return AuditEvent(at=at, **fields)


def _insert(events: list[AuditEvent]) -> None:
    """Bulk insert; if the batch fails on a bad row, row by row so only that row is lost
    (and logged), instead of the whole buffer being stuck behind it."""
    try:
        with transaction.atomic():
            AuditEvent.objects.bulk_create(events)
        return
    except (DataError, IntegrityError):  # a bad row; a database that is down raises others
        log.exception("audit batch insert failed; inserting events one by one")
    for event in events:
        try:
            with transaction.atomic():
                event.save()
        except (DataError, IntegrityError):
            log.exception("audit event %s could not be stored", event.action)


def flush_buffer(batch: int = FLUSH_BATCH) -> int:
    """Moves buffered events into the database; returns how many. One flusher at a time."""
    client = redis_client()
    if not client.set(FLUSH_LOCK_KEY, "1", nx=True, ex=60):
        return 0
    written = 0
    try:
        while True:
            raw_events = client.lrange(BUFFER_KEY, 0, batch - 1)
            if not raw_events:
                break
            _insert([_from_buffer(raw) for raw in raw_events])
            # Producers only append at the tail, so the head we read is still the head.
            client.ltrim(BUFFER_KEY, len(raw_events), -1)
            written += len(raw_events)
            # A long backlog (after an outage) must not outlive the lock: another flusher
            # would read the same head and insert it twice.
            client.expire(FLUSH_LOCK_KEY, 60)
    finally:
        client.delete(FLUSH_LOCK_KEY)
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
