"""A company IdP the test controls, over real HTTP: its discovery document and JWKS are
served by a local server (which records every fetch), and it signs whatever user tokens a
test needs (expired, another algorithm, a rolled key) for token exchange tests."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

from joserfc import jwt
from joserfc.jwk import RSAKey

from tests.local_http import LocalServer, start_local_server

AUDIENCE = "chat-assistant"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class SubjectIdp:
    def __init__(self) -> None:
        self.server: LocalServer = start_local_server()
        self.issuer = self.server.url
        self.key = RSAKey.generate_key(2048, parameters={"kid": "key-1"})
        self.publish(self.key)

    def publish(self, *keys: RSAKey) -> None:
        self.server.documents["/.well-known/openid-configuration"] = json.dumps(
            {"issuer": self.issuer, "jwks_uri": f"{self.issuer}/jwks"}
        ).encode()
        self.server.documents["/jwks"] = json.dumps(
            {"keys": [k.as_dict(private=False) for k in keys]}
        ).encode()

    def jwks_fetches(self) -> int:
        return sum(1 for r in self.server.requests if r.path == "/jwks")

    def claims(self, subject: str, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 300,
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, subject: str, *, key: RSAKey | None = None, **claims: Any) -> str:
        key = key or self.key
        header = {"alg": "RS256", "kid": key.kid}
        return jwt.encode(header, self.claims(subject, **claims), key)

    def hs256_with_public_key(self, subject: str) -> str:
        """The classic confusion attack: HMAC keyed with the published public key."""
        signing_input = self._unsigned({"alg": "HS256", "kid": self.key.kid}, subject)
        mac = hmac.new(self.key.as_pem(private=False), signing_input.encode(), hashlib.sha256)
        return f"{signing_input}.{_b64(mac.digest())}"

    def unsigned(self, subject: str) -> str:
        """`alg: none` (RFC 7519 6.1): no signature at all."""
        return self._unsigned({"alg": "none", "typ": "JWT"}, subject) + "."

    def _unsigned(self, header: dict[str, Any], subject: str) -> str:
        return (
            f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(self.claims(subject)).encode())}"
        )

    def stop(self) -> None:
        self.server.stop()
