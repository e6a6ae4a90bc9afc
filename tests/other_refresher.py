"""Another process refreshing a grant, played by a thread: it holds the grant's refresh lock
with its refresh marked in flight, commits a new token after a while, then lets go (and
announces it: `lock.refresh_lock`, taken in the test's thread, let go in this one).
(Needs `django_db(transaction=True)`: the thread writes on its own connection.)"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from django.utils import timezone

from broker.models import Grant
from broker.providers.oauth2_client import TokenResponse
from broker.refresh import doubt_marks, grant_statements, lock, single_flight

REFRESHED_ACCESS_TOKEN = "refreshed-access"


@contextmanager
def refreshing_elsewhere(grant: Grant, *, commits_after: float = 0.5) -> Iterator[None]:
    """While the block runs, `grant` is being refreshed by someone else, who stores
    REFRESHED_ACCESS_TOKEN `commits_after` seconds in; the block's end waits for it."""
    holding = ExitStack()
    assert holding.enter_context(lock.refresh_lock(grant.pk, wait=0))
    assert doubt_marks.mark_in_flight(grant.pk, grant.token_version)
    refreshed = TokenResponse(REFRESHED_ACCESS_TOKEN, "refreshed-refresh", 3600, None, "Bearer")

    def commit() -> None:
        time.sleep(commits_after)
        single_flight.persist_refresh(
            grant_statements.load(grant.pk),
            refreshed,
            seen_version=grant.token_version,
            received_at=timezone.now(),
        )
        doubt_marks.clear_in_flight(grant.pk)
        holding.close()

    other = threading.Thread(target=commit)
    other.start()
    try:
        yield
    finally:
        other.join()
