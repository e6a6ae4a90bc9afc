"""private_key_jwt client authentication (RFC 7523 section 3, OpenID Connect Core 9).

The assertion names its key in the header by `kid` (RFC 7638 thumbprint) or, as Azure AD
clients do, by `x5t#S256` (SHA-256 certificate thumbprint). Only asymmetric algorithms are
accepted (never `none`, never HMAC: a public key must not double as a shared secret), and
keys come only from the service's registration, never from the header (`jwk`, `jku`,
`x5u`, `x5c` are ignored). Claims: `iss` = `sub` = client id, `aud` = this token endpoint's
URL, `exp` required and at most five minutes ahead, `nbf`/`iat` not in the future, and
`jti` single-use (remembered in Redis until the assertion expires).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Literal, get_args

from django.conf import settings
from django.urls import reverse
from joserfc import jwt
from joserfc.errors import JoseError

from broker.infra.bounded_json import JsonRefused, unverified_jwt
from broker.infra.lookup_text import matchable
from broker.infra.redis_connection import redis_client, redis_key
from broker.models import ServiceClient, ServiceKey
from broker.service_identity.service_keys import certificate_current, public_jwk

# RFC 7523 2.2 (private_key_jwt).
ClientAssertionType = Literal["urn:ietf:params:oauth:client-assertion-type:jwt-bearer"]

(ASSERTION_TYPE,) = get_args(ClientAssertionType)
ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA", "Ed25519")
MAX_LIFETIME = 300  # seconds an assertion may reach into the future
CLOCK_SKEW = 30


class AssertionRejected(Exception):
    """The assertion does not authenticate the client; the message is for the audit log."""


def token_endpoint_url() -> str:
    return settings.BROKER_PUBLIC_URL + reverse("api-token")


def unverified_parts(assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims before verification: only used to find the client and its key.
    Read by the bounded parser, so a token nested too deeply or too large is just a
    malformed assertion, refused before joserfc parses it again."""
    try:
        return unverified_jwt(assertion)
    except JsonRefused as exc:
        raise AssertionRejected(f"malformed assertion: {exc}") from None


def claimed_client_id(assertion: str) -> str:
    _, claims = unverified_parts(assertion)
    issuer = claims.get("iss")
    if not isinstance(issuer, str) or not issuer or claims.get("sub") != issuer:
        raise AssertionRejected("iss and sub must both be the client id")
    return issuer


def _find_key(service: ServiceClient, header: dict[str, Any]) -> ServiceKey:
    keys = ServiceKey.objects.filter(service=service, enabled=True)
    names = [header.get(name) for name in ("kid", "x5t#S256")]
    if not matchable(*(name for name in names if isinstance(name, str))):
        raise AssertionRejected("unknown key")
    if isinstance(header.get("kid"), str):
        found = keys.filter(kid=header["kid"]).first()
    elif isinstance(header.get("x5t#S256"), str):
        found = keys.filter(x5t_s256=header["x5t#S256"]).exclude(x5t_s256="").first()
    else:
        raise AssertionRejected("the header names no key (kid or x5t#S256)")
    if found is None:
        raise AssertionRejected("unknown key")
    if not certificate_current(found):
        raise AssertionRejected("the registered certificate is outside its validity period")
    return found


def verify(service: ServiceClient, assertion: str) -> ServiceKey:
    """Verifies `assertion` for `service`; returns the key it was signed with."""
    header, _ = unverified_parts(assertion)
    if header.get("alg") not in ALGORITHMS:
        raise AssertionRejected(f"algorithm {header.get('alg')!r} is not accepted")
    key = _find_key(service, header)
    try:
        token = jwt.decode(assertion, public_jwk(key.public_key_pem), algorithms=list(ALGORITHMS))
    except JoseError as exc:
        raise AssertionRejected(f"signature: {exc.error}") from exc
    claims = token.claims
    now = int(time.time())
    registry = jwt.JWTClaimsRegistry(
        now=now,
        leeway=CLOCK_SKEW,
        iss={"essential": True, "value": service.client_id},
        sub={"essential": True, "value": service.client_id},
        aud={"essential": True, "value": token_endpoint_url()},
        exp={"essential": True},
        jti={"essential": True},
    )
    try:
        registry.validate(claims)
    except JoseError as exc:
        raise AssertionRejected(f"claims: {exc.error} {exc.description or ''}".strip()) from exc
    expires = claims["exp"]
    if expires > now + MAX_LIFETIME + CLOCK_SKEW:
        raise AssertionRejected("exp is more than five minutes ahead")
    issued = claims.get("iat")
    if issued is not None and (not isinstance(issued, int | float) or issued > now + CLOCK_SKEW):
        raise AssertionRejected("iat is in the future")
    if not isinstance(claims["jti"], str) or not claims["jti"]:
        raise AssertionRejected("jti must be a non-empty string")
    _use_jti_once(service, claims["jti"], int(expires) - now + CLOCK_SKEW)
    return key


def _use_jti_once(service: ServiceClient, jti: str, seconds: int) -> None:
    """RFC 7523 3 (7): a jti is accepted once; remembered until the assertion has expired."""
    digest = hashlib.sha256(jti.encode()).hexdigest()
    key = redis_key("jti", service.pk, digest)
    if not redis_client().set(key, "1", nx=True, ex=max(1, seconds)):
        raise AssertionRejected("jti was already used (replay)")
