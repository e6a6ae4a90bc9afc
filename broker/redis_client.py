"""One Redis connection pool per process for the broker's own keys (not Celery's, not cache's).

Hot paths (broker token checks, rate limits, replay caches, the audit buffer) talk to Redis
directly so that several commands travel in one pipeline round trip.
"""

from __future__ import annotations

from functools import cache

import redis
from django.conf import settings


@cache
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def get_redis() -> redis.Redis:
    return _client(settings.REDIS_URL)


KEY_PREFIX = "broker:"
