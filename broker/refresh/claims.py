"""Claims: the beat's selection of due grants, an admin's "refresh now", and the worker's
refresh of a claimed grant.

`claim_due_grants` selects due grants through the (status, next_refresh_at) index and, in
the same transaction, marks them claimed: `refresh_enqueued_at = now` and
`next_refresh_at = now + claim timeout`. Moving `next_refresh_at` is the lease: a claimed
grant leaves the due range (so the next beat's index scan never wades through claimed
rows), and comes back by itself when the claim is older than the timeout (a lost task,
a killed worker). It is the spec'd condition "refresh_enqueued_at is null or older than
the claim timeout" kept inside the index. On PostgreSQL the selection is
`FOR UPDATE SKIP LOCKED`, so concurrent beats claim disjoint rows; on SQLite the
IMMEDIATE transaction serialises them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from broker.models import Grant
from broker.refresh.single_flight import RefreshOutcome, Result, single_flight
from broker.refresh.timing import claim_timeout


def is_due(grant: Grant, now: datetime) -> bool:
    """Claimed by the beat and not refreshed since, or past its refresh time."""
    if grant.refresh_enqueued_at is not None:
        return True
    return grant.next_refresh_at is not None and grant.next_refresh_at <= now


def refresh_grant_now(grant_id: Any, *, retries_left: int = 0) -> RefreshOutcome:
    """Refreshes a claimed grant unless that already happened (idempotent: a duplicate or
    late task finds the claim cleared and does nothing). `retries_left`: how many more
    times the task may retry itself; `task_retry_in` in the outcome says when it should."""
    outcome, _ = single_flight(
        grant_id,
        needs_refresh=lambda g, in_doubt: in_doubt or is_due(g, timezone.now()),
        task_may_retry=retries_left > 0,
        reload=False,
    )
    if outcome.result in (Result.BUSY, Result.DATABASE_UNAVAILABLE) and retries_left > 0:
        # The claim stays (its lease runs out on its own if these retries are lost too).
        return RefreshOutcome(outcome.result, outcome.retry_after, outcome.retry_after or 1)
    return outcome


def claim_due_grants(
    *,
    on_claimed: Callable[[list[str]], None],
    now: datetime | None = None,
    batch_size: int | None = None,
) -> list[str]:
    """Claims up to `batch_size` due grants (oldest first) and calls `on_claimed(ids)` once
    the claim is committed. See the module docstring for the lease."""
    now = now or timezone.now()
    batch_size = batch_size or settings.BROKER_REFRESH_BATCH_SIZE
    # Grants of deactivated users are left as they are (not refreshed, not cleared): once
    # the user is reactivated they are due, and refreshed, at the next beat.
    due = Grant.objects.filter(
        status=Grant.Status.ACTIVE, next_refresh_at__lte=now, user__is_active=True
    )
    with transaction.atomic():
        candidates = due.order_by("next_refresh_at").values_list("pk", flat=True)
        if connection.features.has_select_for_update_skip_locked:
            # Lock the grant rows only (not the users joined for is_active).
            candidates = candidates.select_for_update(skip_locked=True, of=("self",))
        ids = [str(pk) for pk in candidates[:batch_size]]
        if ids:
            due.filter(pk__in=ids).update(
                refresh_enqueued_at=now, next_refresh_at=now + claim_timeout()
            )
            transaction.on_commit(lambda: on_claimed(ids))
    return ids


def claim_now(grant_ids: list[str], *, on_claimed: Callable[[list[str]], None]) -> list[str]:
    """Claims these grants for refresh whether due or not (an admin's "refresh now"), as the
    beat claims due ones, so that their task refreshes them once; active grants holding a
    refresh token only. Calls `on_claimed(ids)` once the claim is committed."""
    now = timezone.now()
    refreshable = Grant.objects.filter(pk__in=grant_ids, status=Grant.Status.ACTIVE).exclude(
        refresh_token_sealed=""
    )
    with transaction.atomic():
        ids = [str(pk) for pk in refreshable.values_list("pk", flat=True)]
        if ids:
            refreshable.filter(pk__in=ids).update(
                refresh_enqueued_at=now, next_refresh_at=now + claim_timeout()
            )
            transaction.on_commit(lambda: on_claimed(ids))
    return ids
