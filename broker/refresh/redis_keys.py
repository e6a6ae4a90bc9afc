"""The Redis keys of a grant's refresh, and the client that reads and writes them.

Each grant has a refresh lock (`lock_key`), a channel on which its release is announced
(`released_channel`), a rescued token response (`rescue_key`) and an in-flight mark
(`in_flight_key`, `in_flight_since_key`); all are named under BROKER_REDIS_KEY_PREFIX.
"""

from __future__ import annotations

from typing import Any

import redis

from broker.infra.redis_connection import redis_client, redis_key


def lock_key(grant_id: Any) -> str:
    return redis_key("refresh-lock", grant_id)


def released_channel(grant_id: Any) -> str:
    return redis_key("refresh-released", grant_id)


def rescue_key(grant_id: Any) -> str:
    return redis_key("refresh-rescue", grant_id)


def in_flight_key(grant_id: Any) -> str:
    return redis_key("refresh-in-flight", grant_id)


def in_flight_since_key(grant_id: Any) -> str:
    """When the first attempt from the marked version was sent (see `mark_in_flight`)."""
    return redis_key("refresh-in-flight-since", grant_id)


def lock_redis() -> redis.Redis:
    """The shared Redis client, patient enough for the lock and the rescue: losing either
    to a slow Redis would cost a refresh that already reached the provider."""
    return redis_client(socket_timeout=5, connect_timeout=2)
