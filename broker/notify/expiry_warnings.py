"""Telling users and services, once, that a grant's refresh token is about to die of age.

Atlassian refresh tokens lapse 365 days after consent however often they are used
(`Grant.refresh_absolute_expires_at`); only a new consent gives a new one. RECONNECT_WARNING
(14 days) ahead, the beat's `warn_of_expiring_grants` emails the user and sends the
`grant.expiring` webhook, once per grant and consent: `expiry_warning_sent_at` is set by a
conditional UPDATE from null in the transaction that records the notifications, so two beats
(or a task run twice) warn once. A new consent clears it (broker.consent.grant_store).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from celery import shared_task
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from broker.models import RECONNECT_WARNING, Grant
from broker.notify.dispatch import notify

log = logging.getLogger(__name__)

BATCH_SIZE = 200


def warning_due(now: datetime) -> QuerySet[Grant]:
    """Active grants whose refresh token dies of age within the warning period, not warned.
    No join here: the conditional UPDATE in `warn` must stay a single-table WHERE, which
    PostgreSQL re-checks on the locked row (a joined filter becomes a subquery it does not)."""
    return Grant.objects.filter(
        status=Grant.Status.ACTIVE,
        expiry_warning_sent_at__isnull=True,
        refresh_absolute_expires_at__gt=now,
        refresh_absolute_expires_at__lte=now + RECONNECT_WARNING,
    )


def warn(grant_id: str, now: datetime) -> bool:
    """Warns about one grant unless someone already did (or a new consent just renewed it);
    True if this call did."""
    with transaction.atomic():
        if warning_due(now).filter(pk=grant_id).update(expiry_warning_sent_at=now) != 1:
            return False
        grant = Grant.objects.select_related("user", "provider_app").get(pk=grant_id)
        expires_at = grant.refresh_absolute_expires_at or now  # set: warning_due matched it
        notify(
            "grant.expiring",
            grant,
            refresh_expires_at=expires_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        )
    return True


@shared_task(name="broker.expiry_warnings.warn_of_expiring_grants", ignore_result=True)
def warn_of_expiring_grants() -> int:
    """Beat: warns about every grant that entered its warning period; returns how many."""
    now = timezone.now()
    warned = 0
    # Deactivated users are not told (their grants are not served); reactivated in time,
    # they are warned at the next beat.
    due = (
        warning_due(now)
        .filter(user__is_active=True)
        .order_by("refresh_absolute_expires_at")
        .values_list("pk", flat=True)
    )
    while ids := [str(pk) for pk in due[:BATCH_SIZE]]:
        # Each id leaves the due set, warned by this run or by a concurrent one.
        warned += sum(warn(grant_id, now) for grant_id in ids)
    if warned:
        log.info("warned about %d grants whose refresh token expires soon", warned)
    return warned
