"""Per-service rate limit: a fixed one-minute window counted in Redis.

The counter commands ride in the same pipeline as the broker token's generation check
(broker.api.auth), so the limit costs no extra round trip. BROKER_API_RATE_LIMIT is the
number of requests per minute per service; 0 turns the limit off.
"""

from __future__ import annotations

import time

from django.conf import settings
from redis.client import Pipeline

from broker.redis_connection import KEY_PREFIX

WINDOW = 60


def limit() -> int:
    return int(getattr(settings, "BROKER_API_RATE_LIMIT", 0))


def queue_count(pipe: Pipeline, client_id: str, now: float | None = None) -> None:
    """Adds INCR + EXPIRE NX of this window's counter to `pipe` (two results)."""
    window = int((now or time.time()) // WINDOW)
    key = f"{KEY_PREFIX}rl:{client_id}:{window}"
    pipe.incr(key)
    pipe.expire(key, WINDOW + 1, nx=True)


def retry_after(now: float | None = None) -> int:
    """Seconds until the current window ends."""
    current = now or time.time()
    return max(1, int(WINDOW - current % WINDOW) + 1)


def exceeded(count: int) -> bool:
    return 0 < limit() < count
