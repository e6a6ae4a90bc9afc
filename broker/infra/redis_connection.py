"""Redis clients for health checks, metrics and the internal API's hot path (broker token
checks, rate limits, replay caches, the audit buffer): short timeouts, so a dead Redis
answers fast."""

from __future__ import annotations

from functools import lru_cache

import redis
from django.conf import settings

TIMEOUT_SECONDS = 0.5
# Prefix of the broker's own keys (the Django cache adds its own).
KEY_PREFIX = "broker:"


@lru_cache(maxsize=8)
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url, socket_timeout=TIMEOUT_SECONDS, socket_connect_timeout=TIMEOUT_SECONDS
    )


def redis_client(url: str | None = None) -> redis.Redis:
    """A client for `url` (default REDIS_URL), shared per URL within the process."""
    return _client(url or settings.REDIS_URL)
