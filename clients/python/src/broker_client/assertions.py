"""private_key_jwt client authentication (RFC 7523 2.2 and 3; OpenID Connect Core 9).

The service signs a short-lived JWT with its private key: `iss` = `sub` = its client id,
`aud` = the broker's token endpoint URL, a unique `jti`, `exp` one minute ahead (the
broker accepts at most five). The header names the key by `kid`, the RFC 7638 thumbprint
that `createserviceclient --public-key` printed; it is computed from the key when not given.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
LIFETIME = 60  # seconds

# RFC 7638 3.2: the members of each key type that its thumbprint hashes.
THUMBPRINT_MEMBERS = {
    "RSA": ("e", "kty", "n"),
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
}


SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def load_signing_key(private_key: str | bytes) -> tuple[SigningKey, str]:
    """The PEM private key and the JWS algorithm the broker accepts for its kind."""
    pem = private_key.encode() if isinstance(private_key, str) else private_key
    key: PrivateKeyTypes = serialization.load_pem_private_key(pem, password=None)
    if isinstance(key, rsa.RSAPrivateKey):
        return key, "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key, "ES256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key, "EdDSA"
    raise ValueError("the private key must be RSA, EC P-256 or Ed25519")


def thumbprint(public_key: PublicKeyTypes, algorithm: str) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url without padding)."""
    jwk = jwt.get_algorithm_by_name(algorithm).to_jwk(public_key, as_dict=True)
    members = {name: jwk[name] for name in THUMBPRINT_MEMBERS[jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


class AssertionSigner:
    """Makes a fresh client assertion for each token request."""

    def __init__(self, private_key: str | bytes, kid: str | None, client_id: str, audience: str):
        self._key, self.algorithm = load_signing_key(private_key)
        self.kid = kid or thumbprint(self._key.public_key(), self.algorithm)
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
        return jwt.encode(claims, self._key, algorithm=self.algorithm, headers={"kid": self.kid})
