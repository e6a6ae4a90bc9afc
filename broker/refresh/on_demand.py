"""On-demand refresh: what the API calls for a token that must last `min_ttl` seconds.

`ensure_fresh` serves the stored token when it lasts and is not in doubt; otherwise it waits
for a refresh in flight (`broker.refresh.lock.wait_for_refresh_in_flight`) or runs one
itself through `broker.refresh.single_flight.single_flight`.
"""

from __future__ import annotations

import time
from typing import Any

from django.utils import timezone

from broker.models import Grant
from broker.refresh.doubt_marks import stored_token_in_doubt
from broker.refresh.grant_statements import load
from broker.refresh.lock import wait_for_refresh_in_flight
from broker.refresh.single_flight import Result, single_flight
from broker.refresh.timing import lock_wait

# When no refresh can be had, a stored token is still served while it lasts this long (the
# API's expires_in is in whole seconds).
LAST_RESORT_VALIDITY_SECONDS = 1


class ReconnectRequired(Exception):
    """The grant is dead (reconnect_required or revoked): the user must consent again."""


class UserDeactivated(Exception):
    """The grant's user is deactivated (`is_active` false): nothing is served or refreshed.
    The grant itself is kept, so reactivating the user restores it."""


class ProviderUnavailable(Exception):
    """No token valid for the requested time, and none can be had right now."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def require_usable(grant: Grant) -> None:
    """Raises unless tokens may be served and refreshed for this grant."""
    if not grant.is_active:
        raise ReconnectRequired(f"grant is {grant.status}")
    if not grant.user.is_active:
        raise UserDeactivated(f"the user of grant {grant.pk} is deactivated")


def ensure_fresh(
    grant_id: Any,
    *,
    min_ttl: int,
    force_refresh: bool = False,
    refused_version: int | None = None,
    as_read: Grant | None = None,
) -> Grant:
    """The grant, reloaded, with an access token valid for at least `min_ttl` seconds.

    as_read: the grant as the caller read it from the database in this request, which is then
    not read again before waiting for a refresh in flight: a burst of callers on one
    refresh takes no database connection before its wait. When it already does (its token
    lasts, nothing in doubt), it is what is returned, not a reload.

    force_refresh: the token comes from a refresh that completed after this call began.
    refused_version (with force_refresh): the `token_version` of a token the provider just
    refused; a valid token stored since then (another caller's refresh, however recent)
    also does, so a burst of refusals of one token costs one refresh (the proxy's).
    Concurrent callers share one upstream refresh. A caller that finds a refresh
    completed after it began takes that token even if the provider's lifetime is shorter
    than `min_ttl` (refreshing again would not give a longer one), unless it expired.
    When the refresh cannot be had (provider failing, client misconfigured, another refresh
    still busy) and force_refresh was not asked, a stored token that is still valid is
    returned even though it lasts less than `min_ttl`: the caller gets its true expiry, and
    a token that works beats no token.
    Raises Grant.DoesNotExist, ReconnectRequired, UserDeactivated, or ProviderUnavailable
    (no valid token is left and none can be had right now; with force_refresh, whenever no
    fresh token could be had).
    A grant without a refresh token (OAuth 1.0a) is returned as stored while its token is
    valid, even with force_refresh; once expired it becomes reconnect_required.
    Must not run inside transaction.atomic (see require_no_outer_transaction).
    """
    started = timezone.now()
    grant = as_read if as_read is not None else load(grant_id)
    seen_version = grant.token_version
    seen_failures = grant.failure_count

    def refreshed_since_start(candidate: Grant) -> bool:
        return (
            candidate.token_version > seen_version
            and candidate.last_refreshed_at is not None
            and candidate.last_refreshed_at >= started
            # (not expired: a redo of a refresh in doubt may be answered with an old token)
            and candidate.access_token_valid_for(0)
        )

    def replaced_since_refused(candidate: Grant) -> bool:
        return (
            refused_version is not None
            and candidate.token_version > refused_version
            and candidate.access_token_valid_for(min_ttl)
        )

    def satisfied(candidate: Grant) -> bool:
        if refreshed_since_start(candidate) or replaced_since_refused(candidate):
            return True
        return not force_refresh and candidate.access_token_valid_for(min_ttl)

    require_usable(grant)
    if not grant.has_secret("refresh_token") and grant.access_token_valid_for(min_ttl):
        return grant  # cannot be refreshed (OAuth 1.0a, no refresh token): even if forced
    # A rescued response, or a refresh in flight or cut short, means the stored access
    # token may already be replaced upstream (rotation revokes it): never serve it then.
    # (satisfied first: a forced call would read Redis for nothing)
    if satisfied(grant) and not stored_token_in_doubt(grant):
        return grant

    def failed_meanwhile(candidate: Grant) -> bool:
        """The refresh this caller waited for failed: single flight shares its result, so
        the same refresh token does not go upstream again straight away."""
        return candidate.token_version == seen_version and candidate.failure_count > seen_failures

    # Another caller's refresh in flight is waited for without its lock: all its waiters
    # take its token at once when it ends, instead of taking the lock in turn to see it.
    # One wait in all: what waiting for the release took is not waited again for the lock.
    deadline = time.monotonic() + lock_wait()

    def left() -> float:
        return max(0.0, deadline - time.monotonic())

    for last_round in (False, True):
        ended = wait_for_refresh_in_flight(grant_id, wait=left())
        if ended is not None:
            if ended.grant is None:
                raise Grant.DoesNotExist(f"grant {grant_id} is gone")
            require_usable(ended.grant)
            if satisfied(ended.grant) and not ended.in_doubt:
                return ended.grant
        # No refresh in flight, or its result does not do. A refresh another caller began
        # since the look above (its lock taken first) is waited for once more like that,
        # with the others, not by taking its lock in turn after it: each turn re-reads the
        # grant under the lock, one caller after the other, once the answers are due.
        outcome, current = single_flight(
            grant_id,
            needs_refresh=lambda g, in_doubt: (
                (in_doubt or not satisfied(g)) and not failed_meanwhile(g)
            ),
            wait=left() if last_round else 0.0,
        )
        if outcome.result != Result.BUSY:
            break
    if outcome.result == Result.DATABASE_UNAVAILABLE:
        raise ProviderUnavailable("the refreshed token is not stored yet", retry_after=1)
    if current is None:
        raise Grant.DoesNotExist(f"grant {grant_id} is gone")
    require_usable(current)
    if stored_token_in_doubt(current):
        # The refresh this caller waited for timed out, or its holder died and still
        # holds the lock: what is stored may be retired upstream.
        raise ProviderUnavailable(
            f"a refresh of this grant is in doubt ({outcome.result})",
            retry_after=outcome.retry_after or 1,
        )
    if satisfied(current):
        return current
    if not force_refresh and current.access_token_valid_for(LAST_RESORT_VALIDITY_SECONDS):
        return current
    retry_after = outcome.retry_after or 1
    raise ProviderUnavailable(
        f"no access token could be had ({outcome.result})", retry_after=retry_after
    )
