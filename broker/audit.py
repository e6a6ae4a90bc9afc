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
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from broker.models import AuditEvent
from broker.redis_client import KEY_PREFIX, get_redis

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
    return {
        "at": timezone.now(),
        "action": action,
        "actor_type": actor_type,
        "actor": actor,
        "outcome": outcome,
        "grant_id": grant_id,
        "subject_user": subject_user,
        "provider": provider,
        "service": service,
        "scopes": list(scopes),
        "client_ip": client_ip(request),
        "detail": detail,
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
        get_redis().rpush(BUFFER_KEY, json.dumps(fields, cls=DjangoJSONEncoder))
    except redis.RedisError:
        log.warning("audit buffer unavailable; writing %s directly", action)
        AuditEvent.objects.create(**fields)


def _from_buffer(raw: bytes | str) -> AuditEvent:
    fields = json.loads(raw)
    at = datetime.fromisoformat(fields.pop("at"))
    return AuditEvent(at=at, **fields)


def flush_buffer(batch: int = FLUSH_BATCH) -> int:
    """Moves buffered events into the database; returns how many. One flusher at a time."""
    client = get_redis()
    if not client.set(FLUSH_LOCK_KEY, "1", nx=True, ex=60):
        return 0
    written = 0
    try:
        while True:
            raw_events = client.lrange(BUFFER_KEY, 0, batch - 1)
            if not raw_events:
                break
            with transaction.atomic():
                AuditEvent.objects.bulk_create([_from_buffer(raw) for raw in raw_events])
            # Producers only append at the tail, so the head we read is still the head.
            client.ltrim(BUFFER_KEY, len(raw_events), -1)
            written += len(raw_events)
    finally:
        client.delete(FLUSH_LOCK_KEY)
    return written


@shared_task(name="broker.audit.flush_buffer", ignore_result=True)
def flush_buffer_task() -> int:
    return flush_buffer()
