"""How long the audit trail is kept: events older than BROKER_AUDIT_RETENTION_DAYS are
deleted by a daily beat task (`prune_old_events_task`) or by hand (`manage.py pruneaudit`).

Every token served writes an event, so the table grows with traffic (docs/operations.md, "Audit and
retention", has the figure per million fetches). The oldest events go in bounded batches,
each its own short transaction: a delete of millions of rows in one statement would hold
its locks, and on SQLite the whole database's write lock, for as long as it ran, while
the web processes insert. Events are only ever appended with the
time of their recording, so "older than the cutoff" never grows while a prune runs, and
two prunes at once (a manual run beside the beat's) only share the work.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TypedDict

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from broker.audit import trail
from broker.models import AuditEvent

PRUNE_BATCH = 2000


class PruneReport(TypedDict):
    retention_days: int
    cutoff: str | None  # ISO 8601 UTC; None when events are kept forever
    dry_run: bool
    expired: int  # events older than the cutoff when the prune started
    deleted: int
    batches: int


def retention_cutoff(now: datetime | None = None) -> datetime | None:
    """The time before which events are deleted; None when BROKER_AUDIT_RETENTION_DAYS
    is 0 (kept forever)."""
    days = int(settings.BROKER_AUDIT_RETENTION_DAYS)
    if days <= 0:
        return None
    return (now or timezone.now()) - timedelta(days=days)


def prune(*, dry_run: bool = False, batch: int = PRUNE_BATCH) -> PruneReport:
    """Deletes the events older than the retention, at most `batch` rows per statement;
    with `dry_run`, only counts them. The deletion is itself recorded (`audit.pruned`)."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    cutoff = retention_cutoff()
    report: PruneReport = {
        "retention_days": int(settings.BROKER_AUDIT_RETENTION_DAYS),
        "cutoff": cutoff.isoformat() if cutoff else None,
        "dry_run": dry_run,
        "expired": 0,
        "deleted": 0,
        "batches": 0,
    }
    if cutoff is None:
        return report
    expired = AuditEvent.objects.filter(at__lt=cutoff)
    report["expired"] = expired.count()
    if dry_run or not report["expired"]:
        return report
    while True:
        # The oldest first, by the `at` index; each DELETE is one autocommitted statement.
        ids = list(expired.order_by("at").values_list("pk", flat=True)[:batch])
        if not ids:
            break
        deleted, _ = AuditEvent.objects.filter(pk__in=ids).delete()
        report["deleted"] += deleted
        report["batches"] += 1
        if len(ids) < batch:
            break
    trail.record(
        "audit.pruned",
        actor_type=trail.ActorType.SYSTEM,
        actor="audit retention",
        deleted=report["deleted"],
        cutoff=report["cutoff"],
        retention_days=report["retention_days"],
    )
    return report


@shared_task(name="broker.audit.prune_old_events", ignore_result=True)
def prune_old_events_task() -> int:
    """Beat, daily: deletes the events older than BROKER_AUDIT_RETENTION_DAYS."""
    return prune()["deleted"]
