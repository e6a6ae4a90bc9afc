"""Storing what a finished consent yields: the one live grant per (user, app, account).

Both consent flows (OAuth 2.0 and OAuth 1.0a) store through `store_consent`, so a reconnect
always updates the same row in place and a new grant is always announced.
"""

from __future__ import annotations

from collections.abc import Callable

from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import User
from broker.models import Grant, ProviderApp
from broker.notify.dispatch import notify


def store_consent(
    user: User, app: ProviderApp, external_account_id: str, fill: Callable[[Grant], None]
) -> tuple[Grant, bool]:
    """Creates the user's grant for this account, or updates the live one under a row lock;
    `fill` writes the new tokens and account details onto it. Returns (grant, reconnected).
    """
    try:
        return _store(user, app, external_account_id, fill)
    except IntegrityError:
        # Two callbacks for the same new account raced and the other created the grant
        # first (one_live_grant_per_account): this one now updates it.
        return _store(user, app, external_account_id, fill)


@transaction.atomic
def _store(
    user: User, app: ProviderApp, external_account_id: str, fill: Callable[[Grant], None]
) -> tuple[Grant, bool]:
    grant = (
        Grant.objects.select_for_update()
        .select_related("provider_app")
        .filter(user=user, provider_app=app, external_account_id=external_account_id)
        .exclude(status=Grant.Status.REVOKED)
        .first()
    )
    reconnected = grant is not None
    if grant is None:
        grant = Grant(user=user, provider_app=app, external_account_id=external_account_id)
    grant.consented_at = timezone.now()
    grant.failure_count = 0
    grant.last_error = ""
    # A new consent, a new lifetime to warn about.
    grant.expiry_warning_sent_at = grant.final_expiry_warning_sent_at = None
    fill(grant)
    grant.save()
    if not reconnected:
        notify("grant.created", grant)
    return grant, reconnected
