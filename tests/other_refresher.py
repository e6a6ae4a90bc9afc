"""Another process refreshing a grant, played by a thread: it holds the grant's refresh lock
with its refresh marked in flight, commits a new token after a while, then lets go (and
announces it, as `engine.refresh_lock` does).
(Needs `django_db(transaction=True)`: the thread writes on its own connection.)"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from django.utils import timezone

from broker.models import Grant
from broker.providers.oauth2_client import TokenResponse
from broker.refresh import engine

REFRESHED_ACCESS_TOKEN = "refreshed-access"


@contextmanager
def refreshing_elsewhere(grant: Grant, *, commits_after: float = 0.5) -> Iterator[None]:
    """While the block runs, `grant` is being refreshed by someone else, who stores
    REFRESHED_ACCESS_TOKEN `commits_after` seconds in; the block's end waits for it."""
    lock = engine.lock_redis().lock(
        engine.LOCK_KEY.format(grant_id=grant.pk), timeout=30, thread_local=False
    )
    assert lock.acquire(blocking=False)
    assert engine.mark_in_flight(grant.pk, grant.token_version)
    refreshed = TokenResponse(REFRESHED_ACCESS_TOKEN, "refreshed-refresh", 3600, None, "Bearer")

    def commit() -> None:
        time.sleep(commits_after)
        engine.persist_refresh(
            engine.load(grant.pk),
            refreshed,
            seen_version=grant.token_version,
            received_at=timezone.now(),
        )
        engine.clear_in_flight(grant.pk)
        lock.release()
        engine.announce_release(grant.pk)

    other = threading.Thread(target=commit)
    other.start()
    try:
        yield
    finally:
        other.join()
