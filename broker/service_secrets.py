"""Client secrets of service clients: generated here, shown once, stored as a keyed digest.

A secret reads `bks_<43 url-safe characters>` (256 random bits), so a leaked one is easy to
recognise in logs and scanners. Only HMAC-SHA256(key, secret) is stored, with a key derived
from SECRET_KEY, plus the last four characters so an operator can tell secrets apart.
Comparison is constant-time (`hmac.compare_digest`). Rotation keeps the previous secret
valid for a grace period so a service can roll its configuration without downtime.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from broker.models import ServiceClient

PREFIX = "bks_"


def _digest_key() -> bytes:
    # A key of its own, so the digest is useless for anything else signed with SECRET_KEY.
    return hmac.new(
        settings.SECRET_KEY.encode(), b"broker service client secret digest v1", hashlib.sha256
    ).digest()


def digest(secret: str) -> str:
    return hmac.new(_digest_key(), secret.encode(), hashlib.sha256).hexdigest()


def _generate() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def new_secret(service: ServiceClient) -> str:
    """Gives `service` a fresh secret (no grace for any earlier one); returns it, once."""
    value = _generate()
    service.secret_digest = digest(value)
    service.secret_last4 = value[-4:]
    service.secret_created_at = timezone.now()
    service.previous_secret_digest = ""
    service.previous_secret_valid_until = None
    service.save(
        update_fields=[
            "secret_digest",
            "secret_last4",
            "secret_created_at",
            "previous_secret_digest",
            "previous_secret_valid_until",
            "updated_at",
        ]
    )
    return value


def rotate_secret(service: ServiceClient, grace: timedelta) -> str:
    """Replaces the secret; the old one keeps working for `grace`, then stops.

    With no grace the old secret is rotated out at once, and so are the broker tokens it
    obtained (the credentials generation moves on). With a grace, tokens obtained with the
    old secret never outlive the grace (see broker.api.tokens).
    """
    from broker.api import tokens  # the token module imports this one

    value = _generate()
    with transaction.atomic():
        locked = ServiceClient.objects.select_for_update().get(pk=service.pk)
        rotated_out_now = grace <= timedelta(0)
        locked.previous_secret_digest = "" if rotated_out_now else locked.secret_digest
        locked.previous_secret_valid_until = None if rotated_out_now else timezone.now() + grace
        locked.secret_digest = digest(value)
        locked.secret_last4 = value[-4:]
        locked.secret_created_at = timezone.now()
        fields = [
            "secret_digest",
            "secret_last4",
            "secret_created_at",
            "previous_secret_digest",
            "previous_secret_valid_until",
            "updated_at",
        ]
        if rotated_out_now:
            locked.credentials_generation = F("credentials_generation") + 1
            fields.append("credentials_generation")
        locked.save(update_fields=fields)
    locked.refresh_from_db()
    for name in ("secret_digest", "secret_last4", "secret_created_at", "credentials_generation"):
        setattr(service, name, getattr(locked, name))
    service.previous_secret_digest = locked.previous_secret_digest
    service.previous_secret_valid_until = locked.previous_secret_valid_until
    tokens.forget_generation(service.pk)
    return value


def verify_secret(service: ServiceClient, presented: str) -> bool:
    """True when `presented` is the current secret, or the previous one within its grace."""
    return matched_secret(service, presented) is not None


def matched_secret(service: ServiceClient, presented: str) -> str | None:
    """Which secret matched: "current", "previous" (still in its grace period), or None."""
    if not presented.startswith(PREFIX):
        return None
    candidate = digest(presented)
    # Both comparisons always run, so timing does not tell which secret was close.
    current = hmac.compare_digest(candidate, service.secret_digest or "-")
    previous = hmac.compare_digest(candidate, service.previous_secret_digest or "-")
    previous_in_grace = (
        service.previous_secret_valid_until is not None
        and service.previous_secret_valid_until > timezone.now()
    )
    if current:
        return "current"
    if previous and previous_in_grace:
        return "previous"
    return None
