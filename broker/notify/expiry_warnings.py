"""Telling users and services, once per warning, that a grant's credential is about to die
of age.

Atlassian refresh tokens lapse 365 days after consent however often they are used, and
Atlassian API tokens on the date their owner chose (`Grant.refresh_absolute_expires_at`
holds either); only a new consent (or a new API token) gives a new one. RECONNECT_WARNING
(14 days) ahead and again FINAL_WARNING (1 day) ahead, the beat's `warn_of_expiring_grants`
emails the user and sends the `grant.expiring` webhook, once per warning, grant and consent:
each warning's column (`expiry_warning_sent_at`, `final_expiry_warning_sent_at`) is set by
a conditional UPDATE from null in the transaction that records the notifications, so two
beats (or a task run twice) warn once. A grant first seen inside the final day gets the
final warning only (it marks the first one as done too). A new consent clears both
(broker.consent.grant_store).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from celery import shared_task
from django.db import transaction
from django.db.models import F, QuerySet
from django.db.models.functions import Coalesce
from django.utils import timezone

from broker.models import FINAL_WARNING, RECONNECT_WARNING, Grant
from broker.notify.dispatch import notify

log = logging.getLogger(__name__)

BATCH_SIZE = 200


@dataclass(frozen=True)
class ExpiryWarning:
    """One warning: given when at most `ahead` and more than `until` is left (below
    `until`, the next warning's turn), recorded in the column `sent_field`."""

    sent_field: str
    ahead: timedelta
    until: timedelta
    final: bool


FIRST = ExpiryWarning("expiry_warning_sent_at", RECONNECT_WARNING, FINAL_WARNING, final=False)
FINAL = ExpiryWarning("final_expiry_warning_sent_at", FINAL_WARNING, timedelta(0), final=True)
WARNINGS = (FIRST, FINAL)


def warning_due(warning: ExpiryWarning, now: datetime) -> QuerySet[Grant]:
    """Active grants in this warning's window, not yet given it.
    No join here: the conditional UPDATE in `warn` must stay a single-table WHERE, which
    PostgreSQL re-checks on the locked row (a joined filter becomes a subquery it does not)."""
    return Grant.objects.filter(
        status=Grant.Status.ACTIVE,
        **{f"{warning.sent_field}__isnull": True},
        refresh_absolute_expires_at__gt=now + warning.until,
        refresh_absolute_expires_at__lte=now + warning.ahead,
    )


def warn(grant_id: str, now: datetime, warning: ExpiryWarning = FIRST) -> bool:
    """Gives one grant this warning unless someone already did (or a new consent just
    renewed it); True if this call did. The warnings before it count as given."""
    given = WARNINGS[: WARNINGS.index(warning) + 1]
    marks = {w.sent_field: Coalesce(F(w.sent_field), now) for w in given}
    with transaction.atomic():
        if warning_due(warning, now).filter(pk=grant_id).update(**marks) != 1:
            return False
        grant = Grant.objects.select_related("user", "provider_app").get(pk=grant_id)
        expires_at = grant.refresh_absolute_expires_at or now  # set: warning_due matched it
        notify(
            "grant.expiring",
            grant,
            refresh_expires_at=expires_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            final=warning.final,
        )
    return True


@shared_task(name="broker.expiry_warnings.warn_of_expiring_grants", ignore_result=True)
def warn_of_expiring_grants() -> int:
    """Beat: gives every grant the warning whose window it entered; returns how many."""
    now = timezone.now()
    warned = 0
    for warning in WARNINGS:  # their windows do not overlap
        # Deactivated users are not told (their grants are not served); reactivated in
        # time, they are warned at the next beat.
        due = (
            warning_due(warning, now)
            .filter(user__is_active=True)
            .order_by("refresh_absolute_expires_at")
            .values_list("pk", flat=True)
        )
        while ids := [str(pk) for pk in due[:BATCH_SIZE]]:
            # Each id leaves the due set, warned by this run or by a concurrent one.
            warned += sum(warn(grant_id, now, warning) for grant_id in ids)
    if warned:
        log.info("warned about %d grants whose credential expires soon", warned)
    return warned
