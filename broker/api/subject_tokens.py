"""Subject tokens: a signed-in user's token from the company IdP, presented by a service
that acts for that user (RFC 8693 token exchange, or `Broker-Subject-Token` on /sign).

Only JWTs from trusted issuers (BROKER_OIDC_ISSUER and BROKER_SUBJECT_ISSUERS) count,
signed with a public-key algorithm (never `none`, never HS*: anyone holding the public key
could sign those), within `exp`/`nbf` (small leeway), with an `aud` registered for the
presenting service. The issuer's keys come from its discovery document's `jwks_uri`,
fetched through the outbound HTTP module and cached by broker.infra.key_sets (an unknown
`kid` fetches them again at most once per BROKER_JWKS_REFETCH_SECONDS, so the IdP can roll
its keys and random kids cost nothing). The user is the one whose (issuer, `sub`) it names.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import requests
from django.conf import settings
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from accounts.models import ExternalIdentity, User
from broker.api.errors import ApiError
from broker.infra import key_sets
from broker.infra.bounded_json import JsonRefused, unverified_jwt
from broker.infra.outbound_http import provider_session
from broker.models import ServiceClient

ALGORITHMS = ["RS256", "PS256", "ES256", "EdDSA"]
LEEWAY_SECONDS = 30
HEADER = "HTTP_BROKER_SUBJECT_TOKEN"  # the `Broker-Subject-Token` request header


class SubjectTokenRejected(Exception):
    """The subject token proves nothing; the message says why (never the token)."""


@dataclass(frozen=True)
class Subject:
    user: User
    issuer: str


def trusted_issuers() -> list[str]:
    issuers = [settings.BROKER_OIDC_ISSUER, *settings.BROKER_SUBJECT_ISSUERS]
    return [issuer for issuer in issuers if issuer]


def _fetch_key_set(issuer: str) -> KeySet:
    discovery_url = f"{issuer.rstrip('/')}/.well-known/openid-configuration"
    try:
        with provider_session() as session:
            metadata = session.get(discovery_url)
            metadata.raise_for_status()
            document = metadata.json()
            if not isinstance(document, dict) or document.get("issuer") != issuer:
                raise key_sets.KeySetUnavailable("its discovery document names another issuer")
            keys = session.get(document["jwks_uri"])
            keys.raise_for_status()
            return KeySet.import_key_set(keys.json())
    except (requests.RequestException, ValueError, KeyError, TypeError, JoseError) as exc:
        raise key_sets.KeySetUnavailable(type(exc).__name__) from None


def _key_set(issuer: str, kid: object) -> KeySet:
    try:
        return key_sets.key_set(issuer, kid, lambda: _fetch_key_set(issuer))
    except key_sets.KeySetUnavailable as exc:
        raise SubjectTokenRejected(f"cannot load the issuer's keys ({exc})") from None


def forget_cached_keys() -> None:
    """Drops this process's cached key sets (tests)."""
    key_sets.forget()


def unverified_issuer(token: str) -> str:
    """The `iss` a token claims, for the audit of a refusal (not proof of anything)."""
    try:
        issuer = unverified_jwt(token)[1].get("iss")
    except JsonRefused:
        return ""
    return issuer[:255] if isinstance(issuer, str) else ""


def verified_subject(token: str, audiences: list[str]) -> Subject:
    """The active user a valid subject token names, for a service registered for
    `audiences`. Raises SubjectTokenRejected."""
    try:
        header, unverified = unverified_jwt(token)
    except JsonRefused as exc:
        raise SubjectTokenRejected(f"the subject token is {exc}") from None
    issuer = unverified.get("iss")
    if not isinstance(issuer, str) or issuer not in trusted_issuers():
        raise SubjectTokenRejected("the subject token's issuer is not trusted")
    if header.get("alg") not in ALGORITHMS:
        raise SubjectTokenRejected(f"algorithm {header.get('alg')!r} is not accepted")
    key_set = _key_set(issuer, header.get("kid"))
    try:
        claims: dict[str, Any] = jwt.decode(token, key_set, algorithms=ALGORITHMS).claims
    except (JoseError, ValueError) as exc:
        raise SubjectTokenRejected(f"bad signature ({type(exc).__name__})") from None
    registry = jwt.JWTClaimsRegistry(
        leeway=LEEWAY_SECONDS,
        iss={"essential": True, "value": issuer},
        sub={"essential": True},
        exp={"essential": True},
    )
    try:
        registry.validate(claims)
    except JoseError as exc:
        raise SubjectTokenRejected(f"claims: {exc.error} {exc.description or ''}".strip()) from None
    aud = claims.get("aud")
    token_audiences = aud if isinstance(aud, list) else [aud]
    if issuer == settings.BROKER_OIDC_ISSUER and settings.BROKER_OIDC_CLIENT_ID in token_audiences:
        # Issued for signing in to the broker itself, never to a service: refused even where a
        # service's row still lists that audience (written before registration refused it).
        raise SubjectTokenRejected(
            "the subject token was issued to the broker's own sign-in, not to this service"
        )
    if not any(isinstance(a, str) and a in audiences for a in token_audiences):
        raise SubjectTokenRejected(
            "the subject token's audience is not registered for this service"
        )
    identity = (
        ExternalIdentity.objects.select_related("user")
        .filter(issuer=issuer, subject=claims["sub"])
        .first()
    )
    if identity is None or not identity.user.is_active:
        raise SubjectTokenRejected("the subject token names no active user of the broker")
    return Subject(user=identity.user, issuer=issuer)


def subject_for_service(
    service_id: uuid.UUID | str, token: str, *, named: str, **audit: Any
) -> Subject:
    """The user a subject token names, for the service presenting it: a 400
    `invalid_request` saying what is wrong with the token `named` (a field or header)."""
    audiences = (
        ServiceClient.objects.filter(pk=service_id)
        .values_list("subject_audiences", flat=True)
        .first()
    )
    try:
        return verified_subject(token, list(audiences or []))
    except SubjectTokenRejected as exc:
        raise ApiError(
            400,
            "invalid_request",
            f"{named}: {exc}",
            subject_issuer=unverified_issuer(token),
            **audit,
        ) from None
