"""The one place the broker builds Redis clients.

By default the timeouts are short, so a dead Redis answers fast: health checks, metrics and
the internal API's hot path (broker token checks, rate limits, replay caches, the audit
buffer). The refresh engine asks for longer ones (`socket_timeout`, `connect_timeout`): a
lock or rescue lost to a slow Redis would cost a refresh that already reached the provider.
"""

from __future__ import annotations

from functools import lru_cache

import redis
from django.conf import settings
from redis.driver_info import DriverInfo

TIMEOUT_SECONDS = 0.5
# Connections idle this long are pinged before use, so a Redis restart costs no command.
HEALTH_CHECK_INTERVAL_SECONDS = 30
# Connections a client's pool may open. redis-py 8's default, 100, is fewer than the
# threads of a web process (gunicorn.conf.py: 256): the 101st command in flight at once
# failed with MaxConnectionsError, which the API answers as Redis being down (503). A pool
# keeps only as many connections as were in use at once; this bound is only a backstop.
MAX_CONNECTIONS_PER_CLIENT = 4096


@lru_cache(maxsize=1)
def _driver_info() -> DriverInfo:
    # Made once: left to redis-py, each new connection reads the package's metadata
    # again, a burst of connections (many callers at once) mostly doing that.
    return DriverInfo()


@lru_cache(maxsize=8)
def _client(url: str, socket_timeout: float, connect_timeout: float) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        health_check_interval=HEALTH_CHECK_INTERVAL_SECONDS,
        driver_info=_driver_info(),
        max_connections=MAX_CONNECTIONS_PER_CLIENT,
    )


def redis_client(
    url: str | None = None,
    *,
    socket_timeout: float = TIMEOUT_SECONDS,
    connect_timeout: float = TIMEOUT_SECONDS,
) -> redis.Redis:
    """A client for `url` (default REDIS_URL), shared per URL and timeouts in the process."""
    return _client(url or settings.REDIS_URL, socket_timeout, connect_timeout)


def redis_key(*parts: object) -> str:
    """The name of one of the broker's own Redis keys: BROKER_REDIS_KEY_PREFIX, then the
    parts joined by colons (`redis_key("refresh-lock", grant_id)`)."""
    return settings.BROKER_REDIS_KEY_PREFIX + ":".join(str(part) for part in parts)
