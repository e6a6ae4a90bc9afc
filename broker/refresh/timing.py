"""How long the refresh engine waits, holds and backs off, from the settings, and the
start-up checks that keep those times consistent with each other."""

from __future__ import annotations

import math
import random
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core import checks


def provider_timeout() -> float:
    return float(settings.BROKER_PROVIDER_TIMEOUT)


def lock_timeout() -> float:
    """How long a lock lives: the HTTP call, the write, and a margin."""
    configured = settings.BROKER_REFRESH_LOCK_TIMEOUT
    return float(configured) if configured else 2 * provider_timeout() + 10


def lock_wait() -> float:
    """How long a caller waits for another process's refresh before giving up (busy)."""
    return 2 * provider_timeout()


def claim_timeout() -> timedelta:
    return timedelta(seconds=settings.BROKER_REFRESH_CLAIM_TIMEOUT)


def backoff_seconds(failures: int, retry_after: float | None = None) -> int:
    """Exponential backoff with full jitter in its upper half, at least Retry-After.

    Capped (BROKER_REFRESH_BACKOFF_MAX, 5 minutes by default) so that a retry after a
    timeout, whose request the provider may have processed, still falls inside Atlassian's
    ten-minute reuse window.
    """
    base = float(settings.BROKER_REFRESH_BACKOFF_BASE)
    cap = float(settings.BROKER_REFRESH_BACKOFF_MAX)
    ceiling = min(cap, base * 2 ** max(0, failures - 1))
    delay = ceiling / 2 + random.random() * ceiling / 2
    return max(1, math.ceil(max(delay, retry_after or 0)))


def check_timing(**kwargs: Any) -> list[checks.CheckMessage]:
    """The refresh lock must outlast the provider call it covers (whose total deadline is
    BROKER_PROVIDER_TIMEOUT), or a second refresh starts while the first is in flight; the
    Celery visibility timeout and the claim timeout must outlast the lock, or a slow
    refresh's task is handed to a second worker, or re-claimed, meanwhile."""
    errors: list[checks.CheckMessage] = []
    if lock_timeout() <= provider_timeout():
        errors.append(
            checks.Error(
                f"BROKER_REFRESH_LOCK_TIMEOUT ({lock_timeout():g}s) must exceed "
                f"BROKER_PROVIDER_TIMEOUT ({provider_timeout():g}s), the longest a provider "
                "call can take",
                id="broker.E103",
            )
        )
    visibility = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("visibility_timeout", 3600)
    if visibility <= lock_timeout():
        errors.append(
            checks.Error(
                f"Celery visibility_timeout ({visibility}s) must exceed the refresh lock "
                f"timeout ({lock_timeout():.0f}s)",
                id="broker.E101",
            )
        )
    if claim_timeout().total_seconds() <= lock_timeout():
        errors.append(
            checks.Warning(
                "BROKER_REFRESH_CLAIM_TIMEOUT should exceed the refresh lock timeout "
                f"({lock_timeout():.0f}s), or slow refreshes get claimed twice",
                id="broker.W102",
            )
        )
    return errors
