"""Ending API-token grants when their token expires.

An API token cannot be refreshed (the refresh engine's beat never claims these grants: they
have no next refresh time), so the one thing the engine does for them is this: once the
expiry date its owner gave has come, the beat marks the grant `reconnect_required`, wipes
the token and tells the user and the subscribed services (`grant.reconnect_required`, as
for any grant that died). The proxy refuses an expired token by itself in the meantime
(broker.providers.api_token_auth), so the beat's period only delays the notification.
"""

from __future__ import annotations

import logging
from datetime import datetime

from celery import shared_task
from django.db import transaction
from django.utils import timezone

from broker.models import Grant
from broker.providers.api_token_auth import API_TOKEN_KINDS
from broker.refresh.single_flight import announce

log = logging.getLogger(__name__)

BATCH_SIZE = 200


def expire(grant_id: str, now: datetime) -> bool:
    """Ends one grant whose API token has expired, unless it is no longer active or a new
    token was stored meanwhile; True if this call did (a conditional UPDATE, so two beats
    end it, and tell about it, once)."""
    wiped = {Grant.sealed_column_name(field): "" for field in Grant.SEALED_FIELDS}
    with transaction.atomic():
        ended = Grant.objects.filter(
            pk=grant_id, status=Grant.Status.ACTIVE, refresh_absolute_expires_at__lte=now
        ).update(
            **wiped,
            status=Grant.Status.RECONNECT_REQUIRED,
            last_error="the API token has expired",
            updated_at=now,
        )
    if ended != 1:
        return False
    grant = Grant.objects.select_related("user", "provider_app").get(pk=grant_id)
    announce("grant.reconnect_required", grant, reason="api_token_expired")
    return True


@shared_task(name="broker.refresh.end_expired_api_tokens", ignore_result=True)
def end_expired_api_tokens() -> int:
    """Beat: ends every active API-token grant whose token has expired; returns how many."""
    now = timezone.now()
    due = (
        Grant.objects.filter(
            status=Grant.Status.ACTIVE,
            provider_app__kind__in=API_TOKEN_KINDS,
            refresh_absolute_expires_at__lte=now,
        )
        .order_by("refresh_absolute_expires_at")
        .values_list("pk", flat=True)
    )
    ended = 0
    while ids := [str(pk) for pk in due[:BATCH_SIZE]]:
        # Each id leaves the due set, ended by this run or by a concurrent one.
        ended += sum(expire(grant_id, now) for grant_id in ids)
    if ended:
        log.info("ended %d grants whose API token expired", ended)
    return ended
