"""The one place the broker builds Redis clients.

By default the timeouts are short, so a dead Redis answers fast: health checks, metrics and
the internal API's hot path (broker token checks, rate limits, replay caches). The refresh
engine asks for longer ones (`socket_timeout`, `connect_timeout`): a lock or rescue lost to
a slow Redis would cost a refresh that already reached the provider.

With Redis Sentinel (`BROKER_REDIS_SENTINELS`, `BROKER_REDIS_SENTINEL_MASTER`) every client
asks the sentinels where the master is, and asks again once that master stops answering or
turns out to be a replica; a Redis URL then gives only the database number and password.
Django's cache (`SharedPool`) and Celery's broker (`celery_broker_url`) follow from here too.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import redis
from django.conf import settings
from redis.backoff import ExponentialWithJitterBackoff
from redis.connection import ConnectionPool, SSLConnection, parse_url
from redis.driver_info import DriverInfo
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedSSLConnection

TIMEOUT_SECONDS = 0.5
# Connections idle this long are pinged before use, so a Redis restart costs no command.
HEALTH_CHECK_INTERVAL_SECONDS = 30
# Connections a client's pool may open. redis-py 8's default, 100, is fewer than the
# threads of a web process (gunicorn.conf.py: 256): the 101st command in flight at once
# failed with MaxConnectionsError, which the API answers as Redis being down (503). A pool
# keeps only as many connections as were in use at once; this bound is only a backstop.
MAX_CONNECTIONS_PER_CLIENT = 4096
# A command that lost its connection is tried again this many times, waiting a little more
# each time (at most 1 s): redis-py's own default for a client made from a URL. A client
# made from a pool (the Sentinel one) gets none unless given; with it, a failover that ends
# within those waits costs the command nothing.
RETRIES = 10

SentinelAddresses = tuple[tuple[str, int], ...]


def parse_sentinel_addresses(entries: list[str]) -> SentinelAddresses:
    """`host:port` entries (BROKER_REDIS_SENTINELS) as (host, port) pairs; ValueError names
    the first entry that is not one."""
    addresses = []
    for entry in entries:
        host, _, port = entry.strip().rpartition(":")
        host = host.removeprefix("[").removesuffix("]")  # [::1]:26379
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{entry!r} is not host:port")
        addresses.append((host, int(port)))
    return tuple(addresses)


def celery_broker_url(redis_url: str, sentinels: SentinelAddresses) -> str:
    """Celery's broker URL: `redis_url` itself, or with sentinels kombu's form, one
    `sentinel://` URL per sentinel carrying `redis_url`'s password and database number
    (the master's name goes in the transport options as `master_name`)."""
    if not sentinels:
        return redis_url
    options = parse_url(redis_url)
    credentials = ""
    if options.get("username") or options.get("password"):
        credentials = f"{options.get('username') or ''}:{options.get('password') or ''}@"
    db = options.get("db", 0)
    return ";".join(
        f"sentinel://{credentials}{f'[{host}]' if ':' in host else host}:{port}/{db}"
        for host, port in sentinels
    )


@lru_cache(maxsize=1)
def _driver_info() -> DriverInfo:
    # Made once: left to redis-py, each new connection reads the package's metadata
    # again, a burst of connections (many callers at once) mostly doing that.
    return DriverInfo()


@lru_cache(maxsize=8)
def _client(
    url: str,
    sentinels: SentinelAddresses,
    master: str,
    socket_timeout: float,
    connect_timeout: float,
) -> redis.Redis:
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "health_check_interval": HEALTH_CHECK_INTERVAL_SECONDS,
        "driver_info": _driver_info(),
        "max_connections": MAX_CONNECTIONS_PER_CLIENT,
    }
    if not sentinels:
        return redis.Redis.from_url(url, **options)
    # The URL's host and port are the sentinels' business; its database, user, password
    # and TLS are the master's.
    from_url = parse_url(url)
    from_url.pop("host", None)
    from_url.pop("port", None)
    if from_url.pop("connection_class", None) is SSLConnection:
        from_url["connection_class"] = SentinelManagedSSLConnection
    manager = Sentinel(
        list(sentinels),
        sentinel_kwargs={
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": connect_timeout,
        },
    )
    return manager.master_for(
        master,
        redis_class=redis.Redis,
        retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=1), RETRIES),
        **options,
        **from_url,
    )


def redis_client(
    url: str | None = None,
    *,
    socket_timeout: float = TIMEOUT_SECONDS,
    connect_timeout: float = TIMEOUT_SECONDS,
) -> redis.Redis:
    """A client for `url` (default REDIS_URL), shared per URL and timeouts in the process;
    the Sentinel master's when sentinels are configured."""
    return _client(
        url or settings.REDIS_URL,
        settings.BROKER_REDIS_SENTINELS,
        settings.BROKER_REDIS_SENTINEL_MASTER,
        socket_timeout,
        connect_timeout,
    )


class SharedPool:
    """Django's Redis cache (CACHES' `pool_class` option) on the broker's own client for its
    URL, so the cache follows a Sentinel master like every other Redis use."""

    @classmethod
    def from_url(cls, url: str, **_options: Any) -> ConnectionPool:
        return redis_client(url).connection_pool


def redis_key(*parts: object) -> str:
    """The name of one of the broker's own Redis keys: BROKER_REDIS_KEY_PREFIX, then the
    parts joined by colons (`redis_key("refresh-lock", grant_id)`)."""
    return settings.BROKER_REDIS_KEY_PREFIX + ":".join(str(part) for part in parts)
