"""SCIM bearer tokens, one per IdP connection: issued once, stored as a lookup prefix, a keyed
digest and the last four characters (like service secrets, broker.service_identity.service_secrets).

A token reads `bkscim_<lookup>_<secret>`: recognisable in a leak scan, found by its lookup
part, checked with `hmac.compare_digest` against an HMAC-SHA256 under a key derived from
SECRET_KEY, so a database dump alone cannot test guesses offline.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import ScimConnection

TOKEN_PREFIX = "bkscim_"
LOOKUP_LENGTH = 12


def _digest_key() -> bytes:
    key = settings.SECRET_KEY.encode()
    return hmac.new(key, b"accounts.scim.tokens.v1", hashlib.sha256).digest()


def digest(token: str) -> str:
    return hmac.new(_digest_key(), token.encode(), hashlib.sha256).hexdigest()


def _new_token() -> tuple[str, str]:
    lookup = secrets.token_hex(LOOKUP_LENGTH // 2)
    return lookup, f"{TOKEN_PREFIX}{lookup}_{secrets.token_urlsafe(32)}"


def issue(name: str) -> tuple[ScimConnection, str, bool]:
    """A new token for the connection `name`, made if it does not exist yet; the previous
    token of an existing connection stops working at once (rotation). Returns the
    connection, the token (the only time it exists in clear) and whether it was made."""
    lookup, token = _new_token()
    fields = {
        "token_lookup": lookup,
        "token_digest": digest(token),
        "token_last4": token[-4:],
        "token_created_at": timezone.now(),
    }
    with transaction.atomic():
        connection, created = ScimConnection.objects.select_for_update().get_or_create(
            name=name, defaults=fields
        )
        if not created:
            for field, value in fields.items():
                setattr(connection, field, value)
            connection.save(update_fields=list(fields))
    return connection, token, created


def authenticated(presented: str) -> ScimConnection | None:
    """The enabled connection whose token `presented` is, or None."""
    if not presented.startswith(TOKEN_PREFIX):
        return None
    lookup = presented[len(TOKEN_PREFIX) : len(TOKEN_PREFIX) + LOOKUP_LENGTH]
    connection = ScimConnection.objects.filter(token_lookup=lookup, enabled=True).first()
    # The digest is compared even without a row, so timing does not tell a known lookup.
    expected = connection.token_digest if connection else "-" * 64
    if hmac.compare_digest(digest(presented), expected) and connection is not None:
        return connection
    return None
