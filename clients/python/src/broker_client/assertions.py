"""private_key_jwt client authentication (RFC 7523 2.2 and 3; OpenID Connect Core 9).

The service signs a short-lived JWT with its private key: `iss` = `sub` = its client id,
`aud` = the broker's token endpoint URL, a unique `jti`, `exp` one minute ahead (the
broker accepts at most five). The header names the key by `kid`, the RFC 7638 thumbprint
that `createserviceclient --public-key` printed; it is computed from the key when not given.
Signed with joserfc, the broker's own JOSE library; an Ed25519 key signs as `Ed25519`
(RFC 9864, which deprecates `EdDSA`).
"""

from __future__ import annotations

import time
import uuid

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey, RSAKey

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
LIFETIME = 60  # seconds

SigningKey = RSAKey | ECKey | OKPKey


def load_signing_key(private_key: str | bytes) -> tuple[SigningKey, str]:
    """The PEM private key and the JWS algorithm the broker accepts for its kind."""
    pem = private_key.encode() if isinstance(private_key, str) else private_key
    for key_type, algorithm in ((RSAKey, "RS256"), (ECKey, "ES256"), (OKPKey, "Ed25519")):
        try:
            key = key_type.import_key(pem)
        except (JoseError, ValueError, TypeError):
            continue
        if not key.is_private:
            raise ValueError("a private key is needed to sign client assertions")
        if key_type is ECKey and key.get("crv") != "P-256":
            break
        if key_type is OKPKey and key.get("crv") != "Ed25519":
            break
        return key, algorithm
    raise ValueError("the private key must be RSA, EC P-256 or Ed25519")


class AssertionSigner:
    """Makes a fresh client assertion for each token request."""

    def __init__(self, private_key: str | bytes, kid: str | None, client_id: str, audience: str):
        self._key, self.algorithm = load_signing_key(private_key)
        self.kid = kid or self._key.thumbprint()  # RFC 7638 (SHA-256, base64url)
        self._client_id = client_id
        self._audience = audience

    def assertion(self) -> str:
        now = int(time.time())
        claims = {
            "iss": self._client_id,
            "sub": self._client_id,
            "aud": self._audience,
            "iat": now,
            "exp": now + LIFETIME,
            "jti": str(uuid.uuid4()),  # single use (RFC 7523 3 item 7)
        }
        header = {"alg": self.algorithm, "kid": self.kid}
        return jwt.encode(header, claims, self._key, algorithms=[self.algorithm])
