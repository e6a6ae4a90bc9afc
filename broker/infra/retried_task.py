"""The base of Celery tasks that retry with Celery's own options and record how they end.

A task built on `RetriedTask` declares which exceptions are worth another try
(`autoretry_for`) and its schedule: the first wait (`retry_backoff`, seconds), doubled after
each attempt up to `retry_backoff_max`, each wait drawn at random below that (`retry_jitter`,
so the retries of many tasks that failed together do not arrive together), `max_retries`
times. A wait the other side asked for (Retry-After) is honoured with
`raise self.retry(countdown=...)`, which counts against the same `max_retries`.

When the task fails for good (the last retry failed too, or an exception not worth a retry
escaped), Celery calls `on_failure` once, with the task's arguments; it hands over to the
task's `gave_up`, which records the failure where people look for it (a delivery's status,
the audit log). Outcomes the task decides itself (a refusal, a success) it records itself.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task

log = logging.getLogger(__name__)


class RetriedTask(Task):
    retry_jitter = True

    def on_failure(
        self, exc: Exception, task_id: str, args: tuple, kwargs: dict, einfo: Any
    ) -> None:
        attempts = self.request.retries + 1
        try:
            self.gave_up(exc, attempts, *args, **kwargs)
        except Exception:
            # Recording may fail for the reason the task did (the database is away): say so
            # in the worker's log rather than hide the task's own failure.
            log.exception("%s[%s]: could not record its failure", self.name, task_id)

    def gave_up(self, exc: Exception, attempts: int, *args: Any, **kwargs: Any) -> None:
        """Records the final failure after `attempts` attempts; tasks override it."""
        log.warning("%s gave up after %d attempts: %r", self.name, attempts, exc)
