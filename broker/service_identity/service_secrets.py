"""Service client secrets: issued once, stored as a keyed digest plus the last four characters.

A secret reads `bks_<random>` so that it is recognisable in a leak scan. The digest is
HMAC-SHA256 under a key derived from SECRET_KEY, so a database dump alone cannot be used to
test guesses offline (changing SECRET_KEY therefore invalidates every service secret).
Rotation keeps the previous secret valid for a grace period so a service can roll over.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from broker.models import ServiceClient

SECRET_PREFIX = "bks_"
WEBHOOK_SECRET_PREFIX = "bkw_"


def _digest_key() -> bytes:
    return hmac.new(
        settings.SECRET_KEY.encode(), b"broker.service_secrets.v1", hashlib.sha256
    ).digest()


def digest(secret: str) -> str:
    return hmac.new(_digest_key(), secret.encode(), hashlib.sha256).hexdigest()


def new_secret(service: ServiceClient) -> str:
    """Issues a new secret for a saved service, replacing the current one; returns it (the
    only time it exists in clear). The previous secret, if any grace period runs, is kept."""
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    service.secret_digest = digest(secret)
    service.secret_last4 = secret[-4:]
    service.secret_created_at = timezone.now()
    service.save(update_fields=["secret_digest", "secret_last4", "secret_created_at", "updated_at"])
    return secret


def rotate_secret(service: ServiceClient, grace: timedelta) -> str:
    """Issues a new secret; the current one stays valid for `grace`. With no grace the old
    secret dies at once, and so do broker tokens issued with it (credentials generation)."""
    if service.secret_digest and grace > timedelta(0):
        service.previous_secret_digest = service.secret_digest
        service.previous_secret_valid_until = timezone.now() + grace
    else:
        service.previous_secret_digest = ""
        service.previous_secret_valid_until = None
        service.credentials_generation += 1
    service.save(
        update_fields=[
            "previous_secret_digest",
            "previous_secret_valid_until",
            "credentials_generation",
            "updated_at",
        ]
    )
    return new_secret(service)


def matched_secret(service: ServiceClient, presented: str) -> str | None:
    """Which secret `presented` is: "current", "previous" (within its grace), or None.

    Both constant-time comparisons always run, so timing does not tell which was close."""
    presented_digest = digest(presented)
    current = hmac.compare_digest(presented_digest, service.secret_digest or "-")
    previous = hmac.compare_digest(presented_digest, service.previous_secret_digest or "-")
    in_grace = (
        service.previous_secret_valid_until is not None
        and service.previous_secret_valid_until > timezone.now()
    )
    if current and service.secret_digest:
        return "current"
    if previous and service.previous_secret_digest and in_grace:
        return "previous"
    return None


def new_webhook_secret(service: ServiceClient) -> str:
    """A new secret for signing this service's webhooks, stored sealed; returns it once."""
    secret = WEBHOOK_SECRET_PREFIX + secrets.token_urlsafe(32)
    service.seal("webhook_secret", secret)
    service.save(update_fields=["webhook_secret_sealed", "updated_at"])
    return secret
