"""Test switches: injected token-endpoint faults, request counters, upstream revocation,
and the token history that fault drills check the broker against.

All state is in the database so every thread and process of the sandbox shares it.
"""

import hashlib
import time
from dataclasses import dataclass
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from oauth2_provider.models import AccessToken, RefreshToken
from oauth2_provider.settings import oauth2_settings

from sandbox.provider.models import (
    Counter,
    FaultMode,
    OAuth1AccessToken,
    TokenEndpointFault,
)

FAULT_ROW = 1


@dataclass(frozen=True)
class Fault:
    mode: str
    delay: float
    retry_after: int


def set_fault(mode: str, delay: float, retry_after: int, times: int | None) -> None:
    TokenEndpointFault.objects.update_or_create(
        pk=FAULT_ROW,
        defaults={
            "mode": mode,
            "delay": delay,
            "retry_after": retry_after,
            "remaining": times,
        },
    )


def claim_fault() -> Fault | None:
    """The fault to apply to this token request, if any; uses up one of its `times`."""
    state = TokenEndpointFault.objects.filter(pk=FAULT_ROW).first()
    if state is None or state.mode == FaultMode.NONE:
        return None
    if state.remaining is not None:
        # A conditional UPDATE, so concurrent requests never use more than `times`.
        claimed = TokenEndpointFault.objects.filter(
            pk=FAULT_ROW, mode=state.mode, remaining__gt=0
        ).update(remaining=F("remaining") - 1)
        if claimed != 1:
            return None
    return Fault(mode=state.mode, delay=state.delay, retry_after=state.retry_after)


def increment(name: str) -> None:
    if Counter.objects.filter(name=name).update(value=F("value") + 1) == 0:
        with transaction.atomic():
            counter, created = Counter.objects.get_or_create(name=name, defaults={"value": 1})
            if not created:
                Counter.objects.filter(pk=counter.pk).update(value=F("value") + 1)


# Requests received, by "METHOD /path" (request_counter.RequestCounterMiddleware).
REQUEST_PREFIX = "request:"


def count_request(method: str, path: str) -> None:
    increment(f"{REQUEST_PREFIX}{method} {path}"[: Counter._meta.get_field("name").max_length])


def counter_values() -> dict:
    values = dict(Counter.objects.values_list("name", "value"))
    token = {"authorization_code": 0, "refresh_token": 0}
    requests = {}
    for name, value in values.items():
        if name.startswith("token:"):
            token[name.removeprefix("token:")] = value
        if name.startswith(REQUEST_PREFIX):
            requests[name.removeprefix(REQUEST_PREFIX)] = value
    return {
        "token": token,
        "revoke": values.get("revoke", 0),
        "oauth1_access_token": values.get("oauth1_access_token", 0),
        "requests": requests,
        # Calls with Basic auth (API tokens), accepted or not.
        "api_token_basic": values.get("api_token_basic", 0),
    }


def reset_counters() -> None:
    Counter.objects.all().delete()


def revoke_user_tokens(username: str) -> bool:
    """Revoke everything the user granted, as if they removed the apps at the provider."""
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        return False
    with transaction.atomic():
        for refresh_token in RefreshToken.objects.filter(user=user, revoked__isnull=True):
            refresh_token.revoke()
        AccessToken.objects.filter(user=user).delete()
        OAuth1AccessToken.objects.filter(user=user, revoked__isnull=True).update(
            revoked=timezone.now()
        )
    return True


def expire_access_tokens(username: str) -> bool:
    """End the user's OAuth 2.0 access tokens now and keep their refresh tokens, as when a
    provider drops a token early: a client still holding it gets 401, a refresh works."""
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        return False
    now = timezone.now()
    AccessToken.objects.filter(user=user, expires__gt=now).update(expires=now)
    return True


def live_token_counts(username: str) -> dict[str, int]:
    now = timezone.now()
    return {
        "oauth2_access_tokens": AccessToken.objects.filter(
            user__username=username, expires__gt=now
        ).count(),
        "oauth2_refresh_tokens": RefreshToken.objects.filter(
            user__username=username, revoked__isnull=True
        ).count(),
        "oauth1_access_tokens": OAuth1AccessToken.objects.filter(
            user__username=username, revoked__isnull=True, expires__gt=now
        ).count(),
    }


# Token history (benchmarks/drills): kept as Counter rows, so no table of its own.
# "refresh-presented:<sha256>" counts how often a refresh token was sent to the token
# endpoint; "retired:<sha256>" holds when (epoch ms) an access token stopped being valid
# because it was rotated out or revoked (django-oauth-toolkit deletes the row then).
PRESENTED_PREFIX = "refresh-presented:"
# "reused-late:<sha256>": a consumed refresh token presented again after the reuse window
# (REFRESH_TOKEN_GRACE_PERIOD_SECONDS; 0 in the strict sandbox: every reuse is late).
REUSED_LATE_PREFIX = "reused-late:"
RETIRED_PREFIX = "retired:"


def token_digest(token: str) -> str:
    """django-oauth-toolkit's token_checksum: SHA-256 of the raw token."""
    return hashlib.sha256(token.encode()).hexdigest()


def record_refresh_presented(refresh_token: str) -> None:
    """Counts the presentation, and a reuse outside the provider's reuse window. Call it
    inside the token endpoint's transaction, before the rotation: a concurrent rotation of
    the same token is then seen."""
    digest = token_digest(refresh_token)
    increment(PRESENTED_PREFIX + digest)
    window = timedelta(seconds=oauth2_settings.REFRESH_TOKEN_GRACE_PERIOD_SECONDS)
    consumed = RefreshToken.objects.filter(token_checksum=digest, revoked__isnull=False)
    if consumed.exists() and not consumed.filter(revoked__gt=timezone.now() - window).exists():
        increment(REUSED_LATE_PREFIX + digest)


def record_access_token_retired(sender: type, instance: AccessToken, **kwargs: object) -> None:
    """post_delete receiver (connected only when the test switches are on)."""
    Counter.objects.get_or_create(
        name=RETIRED_PREFIX + instance.token_checksum,
        defaults={"value": int(time.time() * 1000)},
    )


def token_history(access_token_digests: list[str]) -> dict:
    """For each access token digest: live (its expiry, epoch ms), retired (when), or
    unknown; and how many refresh tokens were presented more than once."""
    live = {
        checksum: int(expires.timestamp() * 1000)
        for checksum, expires in AccessToken.objects.filter(
            token_checksum__in=access_token_digests
        ).values_list("token_checksum", "expires")
    }
    retired = {
        name.removeprefix(RETIRED_PREFIX): value
        for name, value in Counter.objects.filter(
            name__in=[RETIRED_PREFIX + digest for digest in access_token_digests]
        ).values_list("name", "value")
    }
    reused = Counter.objects.filter(name__startswith=PRESENTED_PREFIX, value__gt=1).count()
    presented = Counter.objects.filter(name__startswith=PRESENTED_PREFIX).count()
    return {
        "live": live,
        "retired": retired,
        "refresh_tokens_presented": presented,
        "refresh_tokens_presented_twice": reused,
        "refresh_tokens_reused_outside_window": Counter.objects.filter(
            name__startswith=REUSED_LATE_PREFIX
        ).count(),
        "reuse_window_seconds": oauth2_settings.REFRESH_TOKEN_GRACE_PERIOD_SECONDS,
    }


def set_groups(username: str, names: list[str]) -> bool:
    """Puts the user in exactly these groups (the IdP's `groups` claim); False if no such user."""
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        return False
    user.groups.set([Group.objects.get_or_create(name=name)[0] for name in names])
    return True
