"""Celery tasks of the refresh engine (`celery -A broker worker` runs them, beat schedules).

Tasks take grant ids, reload the row, do nothing when the grant is gone, not active or no
longer due, and are safe to run twice: the logic is in broker.refresh.claims.
"""

from __future__ import annotations

import logging

from celery import Task, shared_task
from django.conf import settings
from django.db import DatabaseError
from redis.exceptions import RedisError

from broker.infra.retried_task import RetriedTask
from broker.refresh.claims import claim_due_grants, refresh_grant_now
from broker.refresh.single_flight import Result

log = logging.getLogger(__name__)


def enqueue_refreshes(grant_ids: list[str]) -> None:
    """Runs once the claim is committed. If publishing fails, the claims time out and the
    beat claims those grants again."""
    for grant_id in grant_ids:
        refresh_grant.delay(grant_id)


# Task names are what queued messages carry: they stay as they were before the move.
@shared_task(name="broker.tasks.enqueue_due_refreshes", ignore_result=True, quiet_when_idle=True)
def enqueue_due_refreshes() -> int:
    """Beat: claims due grants batch by batch and enqueues one refresh task per grant."""
    claimed = 0
    for _ in range(settings.BROKER_REFRESH_MAX_BATCHES):
        ids = claim_due_grants(on_claimed=enqueue_refreshes)
        claimed += len(ids)
        if len(ids) < settings.BROKER_REFRESH_BATCH_SIZE:
            break
    if claimed:
        log.info("claimed %d grants for refresh", claimed)
    return claimed


class RefreshTask(RetriedTask):
    def gave_up(self, exc: Exception, attempts: int, grant_id: str) -> None:
        # The grant keeps its claim until the claim times out; then the beat takes it again.
        log.warning(
            "refresh of grant %s gave up after %d attempts (%r); the beat takes it again",
            grant_id,
            attempts,
            exc,
        )


# Database or Redis errors: nothing was sent upstream, or its answer waits in the Redis
# rescue, so another attempt is safe; Celery retries them with backoff and jitter.
@shared_task(
    name="broker.tasks.refresh_grant",
    bind=True,
    base=RefreshTask,
    acks_late=True,
    ignore_result=True,
    autoretry_for=(DatabaseError, RedisError),
    retry_backoff=int(settings.BROKER_REFRESH_BACKOFF_BASE),
    retry_backoff_max=int(settings.BROKER_REFRESH_BACKOFF_MAX),
    max_retries=settings.BROKER_REFRESH_TASK_MAX_RETRIES,
)
def refresh_grant(self: Task, grant_id: str) -> str:
    """Refreshes one claimed grant; retries itself on transient failures, after the wait
    the engine asks for (its backoff, at least the provider's Retry-After)."""
    retries_left = max(0, (self.max_retries or 0) - self.request.retries)
    outcome = refresh_grant_now(grant_id, retries_left=retries_left)
    if outcome.task_retry_in is not None:
        raise self.retry(countdown=outcome.task_retry_in)
    if outcome.result not in (Result.REFRESHED, Result.NOT_NEEDED, Result.GONE):
        log.info("refresh of grant %s: %s, next attempt by the beat", grant_id, outcome.result)
    return str(outcome.result)
