"""Writing a token response onto a grant, and when that grant should next be refreshed.

Used by the consent callback and by the refresh engine, so both store tokens, expiries and
the refresh schedule the same way. The caller saves (see `apply_token_response`).
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from django.utils import timezone

from broker.models import Grant
from broker.providers.oauth2_client import TokenResponse

# Refresh this long before the access token expires: a fifth of its lifetime, at least a
# minute and at most fifteen, and never more than half of it (1-second test tokens).
LEAD_FRACTION = 0.2
MIN_LEAD = timedelta(minutes=1)
MAX_LEAD = timedelta(minutes=15)
# Spread grants that were created together over this fraction of the lead.
JITTER_FRACTION = 0.2
# Refresh tokens that lapse when unused are used at least this often (Atlassian: 90 days
# of inactivity -> at least every 30 days).
KEEP_ALIVE_FRACTION = 1 / 3


def refresh_lead(lifetime: timedelta) -> timedelta:
    lead = min(max(lifetime * LEAD_FRACTION, MIN_LEAD), MAX_LEAD)
    return min(lead, lifetime / 2)


def next_refresh_time(grant: Grant, now: datetime) -> datetime | None:
    """Before the access token expires (with jitter), and never later than the keep-alive
    time of an inactivity-limited refresh token. None when the grant cannot be refreshed."""
    if not grant.has_secret("refresh_token") or grant.status != Grant.Status.ACTIVE:
        return None
    candidates = []
    if grant.access_expires_at is not None:
        lifetime = max(grant.access_expires_at - now, timedelta(seconds=1))
        lead = refresh_lead(lifetime)
        jitter = lead * JITTER_FRACTION * random.random()
        candidates.append(grant.access_expires_at - lead - jitter)
    if grant.refresh_expires_at is not None:
        idle_allowance = grant.refresh_expires_at - now
        candidates.append(now + idle_allowance * KEEP_ALIVE_FRACTION)
    if not candidates:
        candidates.append(now + timedelta(days=1))
    return max(min(candidates), now)


def apply_token_response(
    grant: Grant,
    response: TokenResponse,
    *,
    now: datetime | None = None,
    lifetime_from: datetime | None = None,
    refreshed: bool,
) -> list[str]:
    """Stores a token response on `grant` (not saved) and returns the changed fields.

    A response without a refresh token keeps the stored one (Atlassian sometimes omits it).
    `token_version` is bumped so that a writer holding an older read can tell it lost.
    `now`: when the response came; `lifetime_from` (default `now`): when its tokens'
    lifetimes began, if earlier (a provider answering a redone refresh with what it
    issued before: `broker.refresh.doubt_marks.MarkedInFlight`).
    """
    now = now or timezone.now()
    issued = lifetime_from or now
    kind = grant.provider_app.catalog_entry
    grant.seal("access_token", response.access_token)
    fields = ["access_token_sealed", "access_expires_at", "token_version", "status"]
    if response.refresh_token:
        grant.seal("refresh_token", response.refresh_token)
        fields.append("refresh_token_sealed")
    lifetime = response.expires_in or kind.default_access_token_seconds
    grant.access_expires_at = issued + timedelta(seconds=lifetime)
    if response.scopes is not None:
        grant.scopes = response.scopes
        fields.append("scopes")
    if grant.has_secret("refresh_token") and kind.refresh_token_inactivity_days:
        # Each use of the refresh token restarts its inactivity clock.
        grant.refresh_expires_at = issued + timedelta(days=kind.refresh_token_inactivity_days)
        fields.append("refresh_expires_at")
    if kind.refresh_token_absolute_days and grant.refresh_absolute_expires_at is None:
        grant.refresh_absolute_expires_at = grant.consented_at + timedelta(
            days=kind.refresh_token_absolute_days
        )
        fields.append("refresh_absolute_expires_at")
    grant.token_version += 1
    grant.status = Grant.Status.ACTIVE
    if refreshed:
        grant.last_refreshed_at = now
        grant.failure_count = 0
        grant.last_error = ""
        fields += ["last_refreshed_at", "failure_count", "last_error"]
    grant.next_refresh_at = next_refresh_time(grant, now)
    grant.refresh_enqueued_at = None
    fields += ["next_refresh_at", "refresh_enqueued_at", "updated_at"]
    return fields
