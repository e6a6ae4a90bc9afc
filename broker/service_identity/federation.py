"""Services that authenticate with an app token from a trusted identity provider.

Many services already hold an Azure AD (Entra) app token; instead of a broker secret or key
they may send it as the `client_assertion` (the pattern of Entra's federated credentials).
Trust is configured, per issuer, in BROKER_TRUSTED_ISSUERS (JSON list):

    [{"issuer": "https://login.microsoftonline.com/<tid>/v2.0",
      "jwks_uri": "https://login.microsoftonline.com/<tid>/discovery/v2.0/keys",
      "audience": "api://oauth-broker", "tenant": "<tid>", "required_role": "Broker.Client",
      "applications": {"<calling app id>": "<broker client id>"}}]

(`jwks_file` may replace `jwks_uri`; either is cached by broker.infra.key_sets.) The token
must be signed by a key of that JWKS and
carry that `iss`, `aud`, `tid`, a mapped `azp`/`appid` and the required role, and be an app
(not a user's) token: `idtyp=app`, or, since `idtyp` is an optional claim an app must ask
for, Microsoft's documented app-only test (no `scp`, `roles` present, `oid` equal to
`sub`). Entra issues app tokens with no roles at all, so the explicit application map is
required.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests
from django.conf import settings
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from broker.infra import bounded_json, key_sets
from broker.infra.bounded_json import JsonRefused, unverified_jwt
from broker.infra.outbound_http import provider_session

ALGORITHMS = ("RS256", "PS256", "ES256")
HTTP_TIMEOUT = 5
LEEWAY = 60


class FederatedTokenRejected(Exception):
    """The identity provider's token does not authenticate a service."""


def trusted_issuers() -> list[dict[str, Any]]:
    return list(settings.BROKER_TRUSTED_ISSUERS)


def _issuer_config(issuer: object) -> dict[str, Any] | None:
    for entry in trusted_issuers():
        if entry.get("issuer") == issuer:
            return entry
    return None


def is_federated(assertion: str) -> bool:
    """True when the (unverified) assertion claims a trusted external issuer."""
    if not trusted_issuers():
        return False
    try:
        _, claims = unverified_jwt(assertion)
    except JsonRefused:
        return False
    return _issuer_config(claims.get("iss")) is not None


def _load_jwks(config: dict[str, Any]) -> dict[str, Any]:
    if config.get("jwks_file"):
        data: dict[str, Any] = bounded_json.loads(Path(config["jwks_file"]).read_bytes())
        return data
    # A total deadline, like every provider call: the key set is fetched while a service
    # waits for its broker token.
    with provider_session(seconds=HTTP_TIMEOUT) as session:
        response = session.get(config["jwks_uri"])
        response.raise_for_status()
        body: dict[str, Any] = response.json()
    return body


def _fetch_key_set(config: dict[str, Any]) -> KeySet:
    try:
        return KeySet.import_key_set(_load_jwks(config))  # type: ignore[arg-type]
    except (OSError, ValueError, requests.RequestException, JoseError) as exc:
        raise key_sets.KeySetUnavailable(str(exc)) from None


def _decode(token: str, config: dict[str, Any]) -> dict[str, Any]:
    header, _ = unverified_jwt(token)  # read once already by `verify`
    if header.get("alg") not in ALGORITHMS:
        raise FederatedTokenRejected(f"algorithm {header.get('alg')!r} is not accepted")
    try:
        key_set = key_sets.key_set(
            config["issuer"], header.get("kid"), lambda: _fetch_key_set(config)
        )
    except key_sets.KeySetUnavailable as exc:
        raise FederatedTokenRejected(f"cannot load the issuer's keys: {exc}") from None
    try:
        claims: dict[str, Any] = jwt.decode(token, key_set, algorithms=list(ALGORITHMS)).claims
    except (JoseError, ValueError) as exc:
        raise FederatedTokenRejected(f"signature: {exc}") from None
    return claims


def is_app_token(claims: dict[str, Any]) -> bool:
    """An application's own token, not one acting for a user (a delegated token).

    `idtyp` says so when the app registration asked for it (an optional claim); without
    it, Microsoft's documented test: a delegated token carries `scp`, an app-only one does
    not and carries `roles`, and its `oid` (the caller's object id) equals `sub`.
    """
    if "idtyp" in claims:
        return claims["idtyp"] == "app"
    roles, oid, sub = claims.get("roles"), claims.get("oid"), claims.get("sub")
    return (
        "scp" not in claims
        and isinstance(roles, list)
        and bool(roles)
        and isinstance(oid, str)
        and bool(oid)
        and oid == sub
    )


def verify(token: str) -> str:
    """Validates an app token from a trusted issuer; returns the broker client id it maps to."""
    try:
        _, unverified = unverified_jwt(token)
    except JsonRefused as exc:
        raise FederatedTokenRejected(f"the token is {exc}") from None
    config = _issuer_config(unverified.get("iss"))
    if config is None:
        raise FederatedTokenRejected("issuer not trusted")
    claims = _decode(token, config)
    registry = jwt.JWTClaimsRegistry(
        leeway=LEEWAY,
        iss={"essential": True, "value": config["issuer"]},
        aud={"essential": True, "value": config["audience"]},
        exp={"essential": True},
    )
    try:
        registry.validate(claims)
    except JoseError as exc:
        raise FederatedTokenRejected(f"claims: {exc.error} {exc.description or ''}") from None
    if config.get("tenant") and claims.get("tid") != config["tenant"]:
        raise FederatedTokenRejected("wrong tenant")
    if not is_app_token(claims):
        raise FederatedTokenRejected("not an app token (idtyp=app, or no scp, roles, oid=sub)")
    application = claims.get("azp") or claims.get("appid")
    mapped = config.get("applications", {}).get(application)
    if not isinstance(mapped, str):
        raise FederatedTokenRejected("application not mapped to a service")
    role = config.get("required_role")
    roles = claims.get("roles")
    if role and (not isinstance(roles, list) or role not in roles):
        raise FederatedTokenRejected("the required role is missing")
    return mapped
