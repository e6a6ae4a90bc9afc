"""Doubt marks: what tells that a grant's stored tokens may already be retired upstream.

Persist first
  Between receiving a token response and committing it nothing else happens
  (`broker.refresh.single_flight.persist_refresh`, the single write). If that write fails,
  the response is sealed with the key ring (associated data naming the grant) into Redis
  under `refresh-rescue:<grant id>` for ten minutes (Atlassian's reuse window), and every
  later attempt applies it before any upstream call, so the consumed refresh token is never
  sent again after a success.

Refreshes in doubt
  A worker killed between the provider's answer and the commit, or an answer that comes
  after BROKER_PROVIDER_TIMEOUT, leaves the provider with tokens the broker never stored:
  the stored access token is already retired upstream, and the stored refresh token
  consumed. So before each upstream call the holder marks the refresh in flight in Redis
  (`refresh-in-flight:<grant id>` = the token_version it read, for the reuse window); only
  an HTTP error answer, which consumed nothing, clears it. A stored access token of that
  version or an older one is never served (`stored_token_in_doubt`, checked by the API in
  the same round trip as the rescue): a request waits for the refresh in flight and takes
  its result; if the holder is gone, its lock lapses and the next holder finding the mark
  for the version it read refreshes at once, presenting the same refresh token again.
  Inside a reuse window (Atlassian's ten minutes) the provider answers with what it issued
  the first time and the grant lives on; a provider without one answers invalid_grant,
  which the grant would have met at its next refresh anyway. That answer's access token
  was issued at the first attempt, whose time the mark keeps: its lifetime counts from
  then, and a token spent meanwhile is refreshed once more under the same lock with the
  unused refresh token that came with it. The beat's claim lease
  (BROKER_REFRESH_CLAIM_TIMEOUT) brings back a grant nobody asks for within the window.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from broker.crypto.key_ring import DecryptionError
from broker.crypto.sealed_fields import keyring
from broker.models import Grant
from broker.providers.oauth2_client import TokenResponse
from broker.refresh.redis_keys import in_flight_key, in_flight_since_key, lock_redis, rescue_key

log = logging.getLogger(__name__)

# Atlassian tolerates reuse of a consumed refresh token for ten minutes; a rescued response
# older than that is worthless anyway.
RESCUE_TTL_SECONDS = 600


@dataclass(frozen=True)
class Rescue:
    response: TokenResponse
    based_on_version: int
    received_at: datetime
    # When the tokens' lifetimes began, if before received_at (`MarkedInFlight.redo_of`).
    lifetime_from: datetime | None = None

    def __repr__(self) -> str:  # never print tokens
        return f"Rescue(based_on_version={self.based_on_version}, at={self.received_at})"


def rescue_associated_data(grant_id: Any) -> str:
    return f"refresh-rescue:{grant_id}"


def stash_rescue(grant_id: Any, rescue: Rescue) -> bool:
    """Keeps a response whose write failed, sealed, in Redis; False if Redis failed too."""
    payload = json.dumps(
        {
            "access_token": rescue.response.access_token,
            "refresh_token": rescue.response.refresh_token,
            "expires_in": rescue.response.expires_in,
            "scopes": rescue.response.scopes,
            "token_type": rescue.response.token_type,
            "based_on_version": rescue.based_on_version,
            "received_at": rescue.received_at.isoformat(),
            "lifetime_from": (rescue.lifetime_from or rescue.received_at).isoformat(),
        }
    )
    sealed = keyring().encrypt(payload, rescue_associated_data(grant_id))
    try:
        lock_redis().set(rescue_key(grant_id), sealed, ex=RESCUE_TTL_SECONDS)
    except redis.RedisError as exc:
        log.critical(
            "grant %s: refreshed tokens could not be stored in the database nor in Redis (%s);"
            " the next refresh will reuse the previous refresh token",
            grant_id,
            type(exc).__name__,
        )
        return False
    return True


def read_rescue(grant_id: Any) -> Rescue | None:
    return unseal_rescue(grant_id, lock_redis().get(rescue_key(grant_id)))


def unseal_rescue(grant_id: Any, sealed: bytes | str | None) -> Rescue | None:
    """The rescue of `grant_id` from the value of its key (an unreadable one is dropped)."""
    if sealed is None:
        return None
    try:
        text = sealed.decode() if isinstance(sealed, bytes) else str(sealed)
        data = json.loads(keyring().decrypt(text, rescue_associated_data(grant_id)))
    except (DecryptionError, ValueError) as exc:
        log.error("grant %s: unreadable rescued token response dropped (%s)", grant_id, exc)
        drop_rescue(grant_id)
        return None
    response = TokenResponse(
        access_token=data["access_token"],
        refresh_token=data["refresh_token"],
        expires_in=data["expires_in"],
        scopes=data["scopes"],
        token_type=data["token_type"],
    )
    received_at = datetime.fromisoformat(data["received_at"])
    return Rescue(
        response=response,
        based_on_version=int(data["based_on_version"]),
        received_at=received_at,
        # (absent from the rescues of releases before it was kept)
        lifetime_from=datetime.fromisoformat(data["lifetime_from"])
        if "lifetime_from" in data
        else received_at,
    )


def rescue_pending(grant_id: Any) -> bool:
    """Whether a rescued response waits for this grant. With Redis away there can be no
    refresh anyway; the stored token is then served while valid."""
    try:
        return bool(lock_redis().exists(rescue_key(grant_id)))
    except redis.RedisError as exc:
        log.warning("grant %s: cannot check for a rescue (%s)", grant_id, type(exc).__name__)
        return False


def drop_rescue(grant_id: Any) -> None:
    lock_redis().delete(rescue_key(grant_id))


def doubt_keys(grant_id: Any) -> tuple[str, str]:
    """The keys `stored_token_in_doubt` reads: (EXISTS of the rescue, GET of the mark)."""
    return rescue_key(grant_id), in_flight_key(grant_id)


def stored_token_in_doubt(grant: Grant) -> bool:
    """Whether the stored access token of `grant` (as read) may already be retired
    upstream: a rescued response waits, or a refresh from its tokens is in flight or was
    cut short (see "Refreshes in doubt"). One Redis round trip; call it after reading the
    grant, so that a refresh starting later cannot retire what was read before the check.
    With Redis away there can be no refresh anyway: the stored token is then served while
    valid."""
    rescue_key, in_flight_key = doubt_keys(grant.pk)
    pipe = lock_redis().pipeline(transaction=False)
    pipe.exists(rescue_key)
    pipe.get(in_flight_key)
    try:
        rescued, in_flight_from = pipe.execute()
    except redis.RedisError as exc:
        log.warning("grant %s: cannot check for a rescue (%s)", grant.pk, type(exc).__name__)
        return False
    return in_doubt(grant, bool(rescued), in_flight_from)


def in_doubt(grant: Grant, rescued: bool, in_flight_from: bytes | None) -> bool:
    """`stored_token_in_doubt` from the values of `doubt_keys`, read after the grant."""
    # The mark stays after its refresh committed (until it expires): a request that read
    # the grant just before the commit still finds it, for the version it read, and takes
    # the refresh's result instead. Marks from older versions than the one read are spent.
    return rescued or (in_flight_from is not None and int(in_flight_from) >= grant.token_version)


# Marking a refresh from version ARGV[1] in flight at ARGV[2] (epoch seconds) for ARGV[3]
# seconds; a refresh that redoes one in doubt (marked for the same version) keeps the time
# of the first attempt. Returns that time.
MARK_IN_FLIGHT = """
local since = redis.call('GET', KEYS[2])
if not since or redis.call('GET', KEYS[1]) ~= ARGV[1] then
  since = ARGV[2]
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
redis.call('SET', KEYS[2], since, 'EX', ARGV[3])
return since
"""


@dataclass(frozen=True)
class MarkedInFlight:
    """A refresh marked in flight. redo_of: when the refresh in doubt that it redoes (the
    same refresh token, from the same version) was first sent; None for a first attempt.

    A provider answers a refresh token presented again inside its reuse window with what
    it issued the first time: an access token whose lifetime began then, so the broker
    counts it from `redo_of` (the best bound it has), not from the answer. A first
    attempt's token is counted from its answer, as OAuth clients do: a provider issues it
    when it handles the request, which may be long after it was sent (a slow provider)."""

    redo_of: datetime | None


def mark_in_flight(grant_id: Any, seen_version: int) -> MarkedInFlight | None:
    """Before an upstream call; None if Redis cannot take the mark (then no call)."""
    keys = (in_flight_key(grant_id), in_flight_since_key(grant_id))
    now = repr(time.time())
    try:
        since = lock_redis().eval(MARK_IN_FLIGHT, 2, *keys, seen_version, now, RESCUE_TTL_SECONDS)
    except redis.RedisError as exc:
        log.warning("grant %s: refresh not marked in flight (%s)", grant_id, type(exc).__name__)
        return None
    if since.decode() == now:
        return MarkedInFlight(redo_of=None)
    return MarkedInFlight(redo_of=datetime.fromtimestamp(float(since), tz=UTC))


def clear_in_flight(grant_id: Any) -> None:
    """The provider answered with an error: it consumed nothing, the stored tokens stand.
    (A refresh that stored its result leaves the mark: see `stored_token_in_doubt`.)"""
    try:
        lock_redis().delete(in_flight_key(grant_id), in_flight_since_key(grant_id))
    except redis.RedisError as exc:
        log.warning("grant %s: in-flight mark not cleared (%s)", grant_id, type(exc).__name__)
