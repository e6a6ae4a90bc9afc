"""Which grant a request names: by its id, or as a user's grant of an app. One query each,
with the grant's app and user, read from the database in the request that serves it (the
database decides what is served; nothing here is remembered between requests)."""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.db.models import Case, IntegerField, QuerySet, Value, When
from django.utils import timezone

from broker.models import Grant


def _grants() -> QuerySet[Grant]:
    return Grant.objects.select_related("provider_app", "user")


def grant_by_id(grant_id: uuid.UUID | str, slug: str | None = None) -> Grant | None:
    """The grant, if it exists (and belongs to the app `slug`, when given)."""
    try:
        pk = uuid.UUID(str(grant_id))
    except ValueError:
        return None
    found = _grants().filter(pk=pk)
    if slug is not None:
        found = found.filter(provider_app__slug=slug)
    return found.first()


def users_grant(username: str, slug: str) -> Grant | None:
    """The user's grant of the app; with several accounts at one provider, the active one
    connected last. Revoked grants are never chosen."""
    return (
        _grants()
        .filter(user__username=username, provider_app__slug=slug)
        .exclude(status=Grant.Status.REVOKED)
        .order_by(
            Case(When(status="active", then=Value(0)), default=1, output_field=IntegerField()),
            "-consented_at",
        )
        .first()
    )


# How stale last_used_at may get before a use writes it again: a service that calls often
# costs no write per call.
LAST_USED_RESOLUTION = timedelta(seconds=60)


def note_use(grant: Grant, service_id: uuid.UUID) -> None:
    """Records that `service_id` used the grant (last_used_at/by), only when that says
    something new."""
    now = timezone.now()
    if (
        grant.last_used_by_id == service_id
        and grant.last_used_at is not None
        and now - grant.last_used_at < LAST_USED_RESOLUTION
    ):
        return
    Grant.objects.filter(pk=grant.pk).update(last_used_at=now, last_used_by_id=service_id)
    grant.last_used_at, grant.last_used_by_id = now, service_id
