"""A token answer from this process's memory, confirmed by one Redis command.

The usual request makes two Redis round trips: the broker-token check reads what the answer
depends on (the service's credentials generation, its rate-limit counter, the serving
versions of the caches, whether the stored token is in doubt), and after the answer the
audit event and the token metric are pushed. When the grant this request names is in the
process's cache (broker.api.grant_lookup), everything the answer depends on is already
known here except whether those Redis values still hold. So the view runs first, on the
assumption that they do, with no database query allowed; its audit event is held back,
and one script (CONFIRM) checks every assumption and, only if all hold, counts the rate
limit, pushes the event and counts the metric, in one atomic step. The answer is sent only
then. If anything differs, nothing was written and the request runs again the usual way.

So the confirmation happens after the answer was computed and before it is sent, at one
instant: a revocation, refresh, rule change or retired credential that moved a version
before that instant refuses the cached answer, as the usual path's read would.

A confirmed answer is remembered for the same request (service, content type and body)
and given again while it was computed from the process's current copy of the grant and
what the view decided from the clock still holds (`may_repeat`: the token lasts min_ttl,
the last use is noted): the view does not run again, but every answer has its own
CONFIRM, and with it its own audit event (a new id, time and client address), rate-limit
count and metric.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import hiredis
import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from redis.commands.core import Script

from broker.api import grant_lookup, ratelimit, tokens
from broker.audit import trail
from broker.infra import serving_versions
from broker.infra.redis_connection import redis_client
from broker.models import Grant
from broker.ops import metrics
from broker.ops.logging_config import name_service
from broker.refresh import engine

# KEYS: generation, rate counter, (version, writers) of RULES and of the grant, the
# rescue, the in-flight mark, the audit buffer, the token metric.
# ARGV: generation, rate limit (0: none), rate window TTL, now, the two versions, the
# grant's token version, the event, the buffer's capacity, the metric's field.
# Returns 0 when an assumption failed or the rate limit is reached (nothing written: the
# usual path counts and refuses), 1 when confirmed with the event pushed, 2 when confirmed
# but the buffer is full (the event is then written directly).
CONFIRM = """
if redis.call('GET', KEYS[1]) ~= ARGV[1]
  or redis.call('GET', KEYS[3]) ~= ARGV[5]
  or redis.call('ZCOUNT', KEYS[4], ARGV[4], '+inf') > 0
  or redis.call('GET', KEYS[5]) ~= ARGV[6]
  or redis.call('ZCOUNT', KEYS[6], ARGV[4], '+inf') > 0
  or redis.call('EXISTS', KEYS[7]) == 1 then
  return 0
end
local mark = redis.call('GET', KEYS[8])
if mark and tonumber(mark) >= tonumber(ARGV[7]) then return 0 end
local limit = tonumber(ARGV[2])
if limit > 0 and tonumber(redis.call('GET', KEYS[2]) or '0') >= limit then return 0 end
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[3], 'NX')
redis.call('HINCRBY', KEYS[10], ARGV[10], 1)
if redis.call('LLEN', KEYS[9]) < tonumber(ARGV[9]) then
  redis.call('RPUSH', KEYS[9], ARGV[8])
  return 1
end
return 2
"""


class NotWarm(Exception):
    """The answer needs what the process does not hold (a query, a refresh): the request
    runs the usual way."""


@dataclass
class _Held:
    """What the view left to the confirmation."""

    stamp: serving_versions.Stamp
    grant: Grant | None = None
    metric_field: str = ""
    event: trail.ServiceEvent | None = None
    event_json: str = ""
    respond: Callable[[], HttpResponseBase] | None = None
    holds: Callable[[], bool] | None = None


@dataclass(frozen=True)
class _Repeatable:
    """A confirmed answer this process may give again to the same request, from the same
    copy of the grant, while `holds()`; each time with its own confirmation and event."""

    grant: Grant
    metric_field: str
    event: trail.ServiceEvent
    respond: Callable[[], HttpResponseBase]
    holds: Callable[[], bool]


# Bounded like the grant cache: beyond this many, the process starts over.
MAX_REPEATABLE = 10_000
# A token fetch's body is under 200 bytes: a larger one is answered, not remembered.
MAX_REMEMBERED_BODY = 1024
_repeatable: dict[tuple[Any, ...], _Repeatable] = {}


@lru_cache(maxsize=1)
def _script(client: redis.Redis) -> Script:
    return client.register_script(CONFIRM)


class _Line:
    """CONFIRM's own connections to one Redis, taken from and given back to a list (pop and
    append are atomic) past redis-py's client and pool: their retries, checks and
    observability hooks cost a warm answer more than the command itself
    (benchmarks/README.md), and hiredis (requirements.txt) packs the command. A connection
    that failed is dropped, and the request runs the usual way, through the shared client
    and its retries."""

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self._pool = pool
        self._idle: list[redis.Connection] = []
        self._pid = os.getpid()

    def call(self, *args: Any) -> Any:
        if self._pid != os.getpid():  # a forked child must not speak on its parent's sockets
            self._idle, self._pid = [], os.getpid()
        try:
            conn = self._idle.pop()
        except IndexError:
            conn = self._pool.connection_class(**self._pool.connection_kwargs)
        try:
            conn.send_packed_command([hiredis.pack_command(args)])
            reply = conn.read_response()
        except BaseException:
            conn.disconnect()
            raise
        self._idle.append(conn)
        return reply


@lru_cache(maxsize=8)
def _line(client: redis.Redis) -> _Line:
    return _Line(client.connection_pool)


def _no_queries(*args: Any) -> None:
    raise NotWarm


def holding(request: HttpRequest) -> bool:
    """Whether this request runs on the warm path (its audit event is held back)."""
    return hasattr(request, "warm_held")


def require_cold(request: HttpRequest) -> None:
    """Before anything the warm path cannot take back (a refresh, a provider call)."""
    if holding(request):
        raise NotWarm


def hold(
    request: HttpRequest,
    *,
    grant: Grant,
    client_id: str,
    counted_as: str,
    event: trail.ServiceEvent,
) -> None:
    """The view's audit event and token metric, pushed by the confirmation, for the
    token of `grant` (the process's copy)."""
    held: _Held = request.warm_held  # type: ignore[attr-defined]
    held.grant = grant
    held.metric_field = metrics.token_issue_field(client_id, counted_as)
    held.event = event
    held.event_json = event.json_for(request)


def may_repeat(
    request: HttpRequest, respond: Callable[[], HttpResponseBase], *, holds: Callable[[], bool]
) -> None:
    """On the warm path: the view's answer, `respond()`, may be given again to the same
    request (the same service, body and content type) while `holds()` says that what the
    view decided from the time still stands; everything else it read is vouched for by
    the grant's copy being the same and by each answer's own confirmation."""
    if holding(request):
        held: _Held = request.warm_held  # type: ignore[attr-defined]
        held.respond, held.holds = respond, holds


def _bearer(request: HttpRequest) -> tokens.BrokerToken | None:
    scheme, _, value = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    try:
        return tokens.parse(value.strip())
    except tokens.InvalidToken:
        return None


def _forget(request: HttpRequest) -> None:
    for name in ("warm_held", "serving", "grant_from_cache", "broker_token"):
        request.__dict__.pop(name, None)


def answer(
    request: HttpRequest, scope: str | None, view: Callable[..., HttpResponseBase]
) -> HttpResponseBase | None:
    """The view's answer from memory, confirmed; None when the usual path must answer."""
    token = _bearer(request)
    if token is None or (scope is not None and scope not in token.scopes):
        return None
    key = _repeat_key(request, token, view)
    if key is not None and (repeated := _repeat(request, token, key)) is not None:
        return repeated
    grant_id = grant_lookup.grant_id_in_body(request)
    cached = grant_lookup.cached(grant_id) if grant_id is not None else None
    if cached is None:
        return None
    stamp = cached[1]
    request.broker_token = token  # type: ignore[attr-defined]
    request.serving = grant_lookup.Prefetched(  # type: ignore[attr-defined]
        grant_id, stamp[:1], stamp, rescued=False, in_flight_from=None
    )
    held = request.warm_held = _Held(stamp)  # type: ignore[attr-defined]
    try:
        with connection.execute_wrapper(_no_queries):
            response = view(request)
        if held.grant is None or held.event is None or response.status_code != 200:
            raise NotWarm
        confirmed = _confirm(token, held.grant, held)
    except Exception:  # noqa: BLE001 - whatever it was, the usual path answers it
        _forget(request)
        return None
    if not confirmed:
        _forget(request)
        return None
    if key is not None and held.respond is not None and held.holds is not None:
        if len(_repeatable) >= MAX_REPEATABLE:
            _repeatable.clear()
        _repeatable[key] = _Repeatable(
            held.grant, held.metric_field, held.event, held.respond, held.holds
        )
    return _sent(request, token, held, confirmed, response)


def _repeat_key(
    request: HttpRequest, token: tokens.BrokerToken, view: Callable[..., HttpResponseBase]
) -> tuple[Any, ...] | None:
    """What an answer depends on in the request itself (the broker token's scopes were
    checked already); None for a body too large to remember or to read."""
    try:
        body = request.body
    except Exception:  # noqa: BLE001 - unreadable (too large): the usual path says so
        return None
    if len(body) > MAX_REMEMBERED_BODY:
        return None
    return (view, token.service_id, token.client_id, request.content_type, body)


def _repeat(
    request: HttpRequest, token: tokens.BrokerToken, key: tuple[Any, ...]
) -> HttpResponseBase | None:
    """An answer given before to this request, confirmed again; None when there is none,
    or it no longer stands."""
    known = _repeatable.get(key)
    if known is None:
        return None
    cached = grant_lookup.cached(known.grant.pk)
    if cached is None or cached[0] is not known.grant or not known.holds():
        _repeatable.pop(key, None)
        return None
    held = _Held(
        cached[1], known.grant, known.metric_field, known.event, known.event.json_for(request)
    )
    try:
        response = known.respond()
        confirmed = _confirm(token, known.grant, held)
    except Exception:  # noqa: BLE001 - whatever it was, the usual path answers it
        return None
    if not confirmed:
        _repeatable.pop(key, None)  # no plaintext token kept for a grant that changed
        return None
    return _sent(request, token, held, confirmed, response)


def _sent(
    request: HttpRequest,
    token: tokens.BrokerToken,
    held: _Held,
    verdict: int,
    response: HttpResponseBase,
) -> HttpResponseBase:
    """A confirmed answer: the process's copy of its event (written at once when the
    buffer was full, verdict 2), the service named for the request log."""
    trail.pushed_or_written(held.event_json, 1 if verdict == 1 else 0)
    name_service(request, token.client_id)
    return response


@lru_cache(maxsize=grant_lookup.MAX_ENTRIES)
def _grant_keys(grant_id: Any) -> tuple[str, ...]:
    """CONFIRM's keys of one grant: (version, writers) of RULES and of the grant, the
    rescue, the in-flight mark."""
    scopes = (serving_versions.RULES, serving_versions.grant_scope(grant_id))
    return (*serving_versions.version_keys(scopes), *engine.doubt_keys(grant_id))


def _confirm(token: tokens.BrokerToken, grant: Grant, held: _Held) -> int:
    """CONFIRM's verdict on serving `grant`'s token: 1 or 2 when confirmed, 0 otherwise."""
    now = time.time()
    client = redis_client()
    script = _script(client)
    try:
        verdict = _line(client).call(
            "EVALSHA",
            script.sha,
            10,
            tokens.generation_key(token.service_id),
            ratelimit.counter_key(token.client_id, now),
            *_grant_keys(grant.pk),
            trail.BUFFER_KEY,
            metrics.TOKEN_ISSUES,
            token.generation,
            ratelimit.limit(),
            ratelimit.WINDOW + 1,
            now,
            *held.stamp,
            grant.token_version,
            held.event_json,
            settings.BROKER_AUDIT_BUFFER_MAX,
            held.metric_field,
        )
    except redis.exceptions.NoScriptError:
        script.sha = client.script_load(CONFIRM)  # Redis restarted: this request goes cold
        return 0
    return int(verdict)
