"""Revoking many grants at once (offboarding, incidents) as a visible, resumable job.

A job stores its criteria, not a list of grants: each run selects the matching grants that
are still live, in primary-key batches, and revokes them one by one through `revoke_grant`.
Grants revoked by an earlier (killed) run no longer match, and `revoke_grant` itself is
idempotent, so running a job again finishes it without revoking anything twice.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from celery import shared_task
from django.db import transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from broker.audit import trail
from broker.models import AuditEvent, Grant, ProviderApp, RevocationJob, ServiceClient
from broker.revocation.revoke import revoke_grant

logger = logging.getLogger(__name__)

BATCH_SIZE = 100
CRITERIA_KINDS = ("user", "provider", "service", "all")


class CriteriaError(ValueError):
    """The criteria name something that does not exist, or are malformed."""


def validate_criteria(criteria: dict[str, Any]) -> dict[str, Any]:
    """Exactly one of user / provider / service / all, naming something that exists."""
    if len(criteria) != 1 or next(iter(criteria)) not in CRITERIA_KINDS:
        raise CriteriaError("give exactly one of user, provider, service or all")
    kind, value = next(iter(criteria.items()))
    if kind == "all":
        if value is not True:
            raise CriteriaError("all must be true")
        return {"all": True}
    from django.contrib.auth import get_user_model

    exists = {
        "user": lambda: get_user_model()._default_manager.filter(username=value).exists(),
        "provider": lambda: ProviderApp.objects.filter(slug=value).exists(),
        "service": lambda: ServiceClient.objects.filter(client_id=value).exists(),
    }[kind]
    if not isinstance(value, str) or not value or not exists():
        raise CriteriaError(f"no {kind} named {value!r}")
    return {kind: value}


def matching_grants(criteria: dict[str, Any]) -> QuerySet[Grant]:
    """Live grants matching the criteria. By service: every grant it was last used by or
    was issued a token for (audit `token.issued`)."""
    live = Grant.objects.exclude(status=Grant.Status.REVOKED)
    if criteria.get("all") is True:
        return live
    if "user" in criteria:
        return live.filter(user__username=criteria["user"])
    if "provider" in criteria:
        return live.filter(provider_app__slug=criteria["provider"])
    if "service" in criteria:
        client_id = criteria["service"]
        issued = AuditEvent.objects.filter(
            action="token.issued", service=client_id, grant_id__isnull=False
        ).values("grant_id")
        return live.filter(Q(last_used_by__client_id=client_id) | Q(pk__in=issued))
    raise CriteriaError(f"unknown criteria {criteria!r}")


def create_job(
    criteria: dict[str, Any],
    *,
    reason: str,
    requested_by: str,
    job: RevocationJob | None = None,
) -> RevocationJob:
    """Validates and stores a job (not yet run); the total is counted now for progress.
    `job` is an unsaved instance to fill (the admin's add form), else a new one is made."""
    criteria = validate_criteria(criteria)
    if not reason.strip():
        raise CriteriaError("a reason is required")
    job = job or RevocationJob()
    job.criteria = criteria
    job.reason = reason.strip()[:500]
    job.requested_by = requested_by
    job.total = matching_grants(criteria).count()
    job.save()
    trail.record(
        "grants.bulk_revoke_requested",
        actor_type=trail.ActorType.ADMIN,
        actor=requested_by,
        job=str(job.pk),
        criteria=criteria,
        reason=job.reason,
        total=job.total,
    )
    return job


def enqueue_job(job: RevocationJob) -> None:
    job_id = str(job.pk)
    transaction.on_commit(lambda: run_revocation_job.delay(job_id))


def run_job(job_id: uuid.UUID | str, *, max_batches: int | None = None) -> RevocationJob | None:
    """Processes the job's matching grants in batches; returns the job as it stands.

    `max_batches` stops early (a worker stopped mid-way); the next run continues.
    """
    job = RevocationJob.objects.filter(pk=job_id).first()
    if job is None or job.status == RevocationJob.Status.DONE:
        return job
    RevocationJob.objects.filter(pk=job.pk).update(
        status=RevocationJob.Status.RUNNING, started_at=job.started_at or timezone.now()
    )
    actor = f"{job.requested_by} (job {job.pk})"
    grants = matching_grants(job.criteria).order_by("pk")
    after = None
    batches = run_failures = 0
    while max_batches is None or batches < max_batches:
        page = grants if after is None else grants.filter(pk__gt=after)
        ids = list(page.values_list("pk", flat=True)[:BATCH_SIZE])
        if not ids:
            # Failed grants are still live: the job can be run again to retry them.
            status = RevocationJob.Status.FAILED if run_failures else RevocationJob.Status.DONE
            RevocationJob.objects.filter(pk=job.pk).update(
                status=status, finished_at=timezone.now()
            )
            break
        revoked = failed = 0
        last_error = ""
        for grant_id in ids:
            try:
                if revoke_grant(
                    grant_id, actor_type=trail.ActorType.ADMIN, actor=actor, reason=job.reason
                ):
                    revoked += 1
            except Exception as exc:  # one broken row must not stop an incident response
                failed += 1
                last_error = f"grant {grant_id}: {type(exc).__name__}"
                logger.exception("bulk revocation %s: grant %s failed", job.pk, grant_id)
        changes: dict[str, Any] = {"done": F("done") + revoked, "failed": F("failed") + failed}
        if last_error:
            changes["last_error"] = last_error
        RevocationJob.objects.filter(pk=job.pk).update(**changes)
        after = ids[-1]
        batches += 1
        run_failures += failed
    job.refresh_from_db()
    return job


@shared_task(name="broker.bulk_revocation.run_revocation_job")
def run_revocation_job(job_id: str) -> str:
    job = run_job(job_id)
    return job.status if job else "gone"
