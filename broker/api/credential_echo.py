"""A provider's answer that carries the credential the proxy put in is never relayed.

A TRACE-like echo, a debugging endpoint, an error page quoting the request or a misbehaving
server may answer with the `Authorization` header it received: relayed, it would hand the
user's token (or an OAuth 1.0a signature, or an API token) to a service that the proxy
exists to keep it from. The proxy checks the answer's headers and its body, decoded, for
the credential in the forms a server writes it (as sent, JSON-escaped, percent-encoded,
and for Basic auth the API token itself), before relaying any byte that could complete it.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable
from urllib.parse import quote, unquote

# Shorter strings are not secrets worth matching (and would match ordinary text).
SHORTEST_SECRET = 12
OAUTH1_SIGNATURE = re.compile(r'oauth_signature="([^"]+)"')


class CredentialEchoed(Exception):
    """The provider's answer holds the credential sent with the request."""


def secrets_of(authorization: str) -> tuple[bytes, ...]:
    """What an answer must not hold, given the `Authorization` value the proxy sent:
    the whole value, its credential (a Bearer token, the Basic value and its API token, an
    OAuth 1.0a signature as sent and decoded), each as written and in the escaped forms a
    JSON writer or a URL would give it."""
    scheme, _, credential = authorization.partition(" ")
    secrets = {authorization, credential.strip()}
    if scheme.lower() == "basic":
        try:
            user_and_token = base64.b64decode(credential.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            user_and_token = ""
        secrets.add(user_and_token.partition(":")[2])
    elif scheme.lower() == "oauth" and (signature := OAUTH1_SIGNATURE.search(credential)):
        secrets |= {signature.group(1), unquote(signature.group(1))}
    forms = {
        form
        for secret in secrets
        if len(secret) >= SHORTEST_SECRET
        for form in (
            secret,
            json.dumps(secret)[1:-1],
            secret.replace("/", "\\/"),
            quote(secret, safe=""),
        )
    }
    return tuple(sorted(form.encode("utf-8") for form in forms))


def in_headers(headers: Iterable[tuple[str, str]], secrets: tuple[bytes, ...]) -> bool:
    """Whether a header value holds one of `secrets`."""
    return any(
        secret in value.encode("utf-8", "surrogateescape")
        for _, value in headers
        for secret in secrets
    )


class BodyCheck:
    """Checks a body as it streams: `passed(chunk)` gives the bytes that can be relayed,
    holding back the last bytes that could still be the start of a secret, until the next
    chunk shows they are not (`rest()` at the end of the body)."""

    def __init__(self, secrets: tuple[bytes, ...]) -> None:
        self.secrets = secrets
        self.kept = max((len(secret) for secret in secrets), default=1) - 1
        self.held = b""

    def passed(self, chunk: bytes) -> bytes:
        """Raises CredentialEchoed when the body, so far, holds a secret."""
        window = self.held + chunk
        if any(secret in window for secret in self.secrets):
            raise CredentialEchoed
        cut = max(len(window) - self.kept, 0)
        self.held = window[cut:]
        return window[:cut]

    def rest(self) -> bytes:
        held, self.held = self.held, b""
        return held
