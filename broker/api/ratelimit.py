"""Rate limits of the internal API, fixed one-minute windows counted in Redis.

Per service: the counter commands ride in the same pipeline as the broker token's
generation check (broker.api.auth), so the limit costs no extra round trip.
BROKER_API_RATE_LIMIT is the number of requests per minute per service; 0 turns it off.

Failed authentication (wrong secrets, bad assertions at the token endpoint; invalid bearer
tokens elsewhere) is throttled per source address and per claimed client id, before the
credentials are checked: BROKER_AUTH_FAILURES_PER_ADDRESS and BROKER_AUTH_FAILURES_PER_CLIENT
failures per minute (0: no limit). A caller over a limit gets 429 with Retry-After and is
no longer audited, so a flood fills neither the CPU nor the audit log; the window ends
within a minute, so nobody is locked out for longer. The per-client limit is the higher
one: a client id attacked from one address still authenticates from its own.
"""

from __future__ import annotations

import hashlib
import logging
import time

import redis
from django.conf import settings
from redis.client import Pipeline

from broker.api.errors import ApiError
from broker.infra.redis_connection import redis_client, redis_key

WINDOW = 60

log = logging.getLogger(__name__)


def limit() -> int:
    return int(settings.BROKER_API_RATE_LIMIT)


def counter_key(client_id: str, now: float | None = None) -> str:
    """The service's counter of the window `now` falls in."""
    return redis_key("rl", client_id, int((now or time.time()) // WINDOW))


def queue_count(pipe: Pipeline, client_id: str, now: float | None = None) -> None:
    """Adds INCR + EXPIRE NX of this window's counter to `pipe` (two results)."""
    key = counter_key(client_id, now)
    pipe.incr(key)
    pipe.expire(key, WINDOW + 1, nx=True)


def retry_after(now: float | None = None) -> int:
    """Seconds until the current window ends."""
    current = now or time.time()
    return max(1, int(WINDOW - current % WINDOW) + 1)


def exceeded(count: int) -> bool:
    return 0 < limit() < count


# --- failed authentication ---------------------------------------------------------------


class Throttled(ApiError):
    """429 for a caller whose authentication failed too often this window (not audited)."""

    def __init__(self) -> None:
        super().__init__(
            429,
            "rate_limited",
            "too many failed authentications; retry later",
            {"Retry-After": str(retry_after())},
        )


def _failure_counters(kind: str, client_id: str, address: str | None) -> list[tuple[str, int]]:
    """(key, limit) of this window's failure counters; `kind` keeps the token endpoint's
    failures apart from bearer tokens' (a service still using a retired token must not be
    kept from fetching a new one)."""
    window = int(time.time() // WINDOW)
    counters = []
    per_address = int(settings.BROKER_AUTH_FAILURES_PER_ADDRESS)
    per_client = int(settings.BROKER_AUTH_FAILURES_PER_CLIENT)
    if address and per_address > 0:
        counters.append((redis_key("authfail", kind, "addr", address, window), per_address))
    if client_id and per_client > 0:
        # A claimed client id is whatever the caller sent: a digest keeps the key short.
        digest = hashlib.sha256(client_id.encode(errors="backslashreplace")).hexdigest()[:32]
        counters.append((redis_key("authfail", kind, "client", digest, window), per_client))
    return counters


def check_failures(kind: str, client_id: str, address: str | None) -> None:
    """Raises Throttled when a failure counter of this caller reached its limit (one MGET).

    A Redis outage lets the request through: the throttle must not turn it into an outage
    of authentication."""
    counters = _failure_counters(kind, client_id, address)
    if not counters:
        return
    try:
        counts = redis_client().mget([key for key, _ in counters])
    except redis.RedisError as exc:
        log.warning("authentication throttle unavailable: %s", type(exc).__name__)
        return
    if any(int(n or 0) >= cap for n, (_, cap) in zip(counts, counters, strict=True)):
        raise Throttled()


def count_failure(kind: str, client_id: str, address: str | None) -> bool:
    """Counts one failed authentication (one round trip); True when it went beyond a limit,
    so that the caller answers 429 and does not audit it."""
    counters = _failure_counters(kind, client_id, address)
    if not counters:
        return False
    pipe = redis_client().pipeline(transaction=False)
    for key, _ in counters:
        pipe.incr(key)
        pipe.expire(key, WINDOW + 1, nx=True)
    try:
        results = pipe.execute()
    except redis.RedisError as exc:
        log.warning("authentication throttle unavailable: %s", type(exc).__name__)
        return False
    counts = list(zip(results[::2], counters, strict=True))
    for n, (key, cap) in counts:
        if n == cap + 1:  # once per counter and window: the operator hears of it, bounded
            log.warning("authentication throttle engaged for %s until the window ends", key)
    return any(n > cap for n, (_, cap) in counts)
