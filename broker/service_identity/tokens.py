"""Broker tokens: the short-lived bearer tokens services get from /api/v1/oauth/token.

A token is self-contained and HMAC-signed, so checking it needs no database query:
`bkt_<base64url(JSON claims)>.<base64url(HMAC-SHA256)>` with the claims
`sid` (service pk), `cid` (client id), `gen` (the service's credentials generation),
`scp` (API scopes) and `exp`. A token dies before its expiry when the service is disabled
or its credentials generation moves on (secret rotated out): every use reads both from
the database (`is_current`), so no cache can outlive the change.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db.models import F

from broker.models import ServiceClient

PREFIX = "bkt_"

# What a broker token may be used for. A service asks for a subset at the token endpoint;
# the access rules still decide which grants each of these reaches.
API_SCOPES = ("grants:read", "tokens:read", "requests:sign", "connect-links:create")
# The scopes a broker token carries only when one of the service's access rules grants the
# right, and what grants it (`manage.py addaccessrule` flag, admin field): a refusal names it.
RULE_GRANTED_SCOPES = {
    "requests:sign": ("--sign", "Can sign"),
    "connect-links:create": ("--connect-links", "Can create connect links"),
}


class InvalidToken(Exception):
    """The bearer token is malformed, forged, expired or from retired credentials."""


@dataclass(frozen=True)
class BrokerToken:
    service_id: uuid.UUID
    client_id: str
    generation: int
    scopes: tuple[str, ...]
    expires_at: int


def _signing_key() -> bytes:
    return hmac.new(
        settings.SECRET_KEY.encode(), b"broker api token signing v1", hashlib.sha256
    ).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def lifetime_seconds() -> int:
    return int(settings.BROKER_API_TOKEN_SECONDS)


def issue(
    service: ServiceClient, scopes: tuple[str, ...], *, not_after: float | None = None
) -> tuple[str, int]:
    """A new broker token for `service` and its expiry in seconds from now.

    `not_after` caps the expiry (a token obtained with a secret in its grace period must
    not outlive the grace).
    """
    now = time.time()
    expires = now + lifetime_seconds()
    if not_after is not None:
        expires = min(expires, not_after)
    claims = {
        "sid": str(service.pk),
        "cid": service.client_id,
        "gen": service.credentials_generation,
        "scp": " ".join(scopes),
        "exp": int(expires),
    }
    body = PREFIX + _b64(json.dumps(claims, separators=(",", ":")).encode())
    signature = hmac.new(_signing_key(), body.encode(), hashlib.sha256).digest()
    return f"{body}.{_b64(signature)}", max(0, int(expires - now))


# Tokens whose signature this process checked: a service presents the same token for
# minutes, so its HMAC and JSON are worked out once. Bounded; the expiry is checked on
# every use.
_verified: dict[str, BrokerToken] = {}
VERIFIED_MAX_ENTRIES = 10_000


def parse(token: str) -> BrokerToken:
    """Checks signature and expiry (not the generation: see `is_current`)."""
    parsed = _verified.get(token)
    if parsed is None:
        parsed = _verify(token)
        if len(_verified) >= VERIFIED_MAX_ENTRIES:
            _verified.clear()
        _verified[token] = parsed
    if parsed.expires_at <= time.time():
        raise InvalidToken("token expired")
    return parsed


def _verify(token: str) -> BrokerToken:
    body, dot, signature = token.rpartition(".")
    if not dot or not body.startswith(PREFIX):
        raise InvalidToken("malformed token")
    expected = hmac.new(_signing_key(), body.encode(), hashlib.sha256).digest()
    try:
        presented = _unb64(signature)
        if not hmac.compare_digest(expected, presented):
            raise InvalidToken("bad signature")
        claims: dict[str, Any] = json.loads(_unb64(body[len(PREFIX) :]))
        parsed = BrokerToken(
            service_id=uuid.UUID(claims["sid"]),
            client_id=str(claims["cid"]),
            generation=int(claims["gen"]),
            scopes=tuple(str(claims["scp"]).split()),
            expires_at=int(claims["exp"]),
        )
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise InvalidToken("malformed token") from exc
    return parsed


def is_current(token: BrokerToken) -> bool:
    """True while the service is enabled and still at the token's credentials generation,
    as the database says now: a disabled service or retired credentials are refused for
    every request that starts after the change commits, however it was written."""
    return ServiceClient.objects.filter(
        pk=token.service_id, enabled=True, credentials_generation=token.generation
    ).exists()


def disable_service(service: ServiceClient) -> None:
    """Disables the service and retires its credentials (its broker tokens die with them)."""
    ServiceClient.objects.filter(pk=service.pk).update(
        enabled=False, credentials_generation=F("credentials_generation") + 1
    )
    service.refresh_from_db(fields=["enabled", "credentials_generation"])
