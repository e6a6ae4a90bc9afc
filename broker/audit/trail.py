"""The one way to write the audit log. Callers pass identifiers, never tokens or secrets.

Every event is inserted when it is recorded (`record`), in the caller's transaction, or on
its own when there is none: an answer that hands out or uses a credential is sent only
after its event is committed, so no failure of any other system (a Redis failover, a
killed process) can leave a credential use unrecorded, and an event is stored exactly
once. The API's events (`service_event`) are written the same way.

Much of what is recorded comes from unauthenticated callers (a claimed client id, a
parameter name), so every value is made storable on every database and bounded in size
before it is recorded.
"""

from __future__ import annotations

import functools
import json
import logging
import uuid
from collections.abc import Callable, Iterable
from typing import Any, ParamSpec

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection
from django.db.backends.base.base import BaseDatabaseWrapper
from django.http import HttpRequest
from django.utils import timezone

from broker.infra.client_address import client_ip
from broker.infra.request_id import current_request_id
from broker.models import AuditEvent

ActorType = AuditEvent.ActorType
Outcome = AuditEvent.Outcome

# Bounds of what one event may hold: a caller cannot make the broker store megabytes.
DETAIL_TEXT_LIMIT = 500
DETAIL_ITEMS_LIMIT = 100
DETAIL_DEPTH_LIMIT = 4

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
    """One event's columns: what `record()` takes. An event recorded
    while a request is served names it: `detail["request_id"]` (broker.infra.request_id),
    the id on the request's log line and in the X-Request-ID of its upstream calls."""
    request_id = current_request_id()
    if request_id is not None:
        detail["request_id"] = request_id
    # Callers may pass what a client sent (a claimed client id, a username): keep every
    # value storable, so one odd event cannot fail its insert, and the answer with it.
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
    """A writer of events called with `build`'s arguments (the same signature, checked by
    mypy); it receives what `build` made of them."""

    def decorate(write: Callable[[dict[str, Any]], None]) -> Callable[P, None]:
        @functools.wraps(write)
        def call(*args: P.args, **kwargs: P.kwargs) -> None:
            write(build(*args, **kwargs))

        return call

    return decorate


def _json_ready(event: dict[str, Any]) -> dict[str, Any]:
    """An event made by `event_fields` with the two values json cannot write itself
    written here (cheaper than the encoder's fallback)."""
    ready = {**event, "at": event["at"].isoformat()}
    if ready["grant_id"] is not None:
        ready["grant_id"] = str(ready["grant_id"])
    return ready


def event_json(event: dict[str, Any]) -> str:
    """An event made by `event_fields` as JSON: what `json_insert` reads into a row."""
    return json.dumps(_json_ready(event), cls=DjangoJSONEncoder)


def store(event: dict[str, Any]) -> None:
    """Inserts an event made by `event_fields` at once, in the caller's transaction."""
    AuditEvent.objects.create(**event)


@_taking(event_fields)
def record(fields: dict[str, Any]) -> None:
    """Inserts the event at once, in the caller's transaction."""
    store(fields)


def json_insert(on: BaseDatabaseWrapper = connection) -> str:
    """PostgreSQL: an INSERT of the events in its one parameter, a JSON array of events
    whose keys are the columns (`event_json`), for statements that write an event with
    their own change (broker.refresh.grant_statements)."""
    fields = [f for f in AuditEvent._meta.concrete_fields if not f.primary_key]
    columns = ", ".join(f.column for f in fields)
    record = ", ".join(f"{f.column} {f.db_type(on)}" for f in fields)
    table = AuditEvent._meta.db_table  # names of ours; the events are a parameter
    return (
        f"INSERT INTO {table} ({columns}) SELECT {columns} "  # noqa: S608
        f"FROM jsonb_to_recordset(%s::jsonb) AS event({record})"
    )


def service_event(
    action: str, client_id: str, *, outcome: str = Outcome.SUCCESS, **fields: Any
) -> None:
    """A service's request or its refusal, from the internal API."""
    record(
        action,
        actor_type=ActorType.SERVICE,
        actor=client_id,
        service=client_id,
        outcome=outcome,
        **fields,
    )
