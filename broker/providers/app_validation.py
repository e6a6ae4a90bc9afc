"""What a provider app of a given kind needs before the broker can use it.

One set of rules for both ways an app is set up: `manage.py loadproviders` (the providers
file) and the admin form. Each problem names the field as the providers file spells it;
the admin shows the same message at its own field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator

from broker.catalog.provider_kinds import (
    ENDPOINT_NAMES,
    REQUIRED_ENDPOINTS,
    ProviderKind,
    resolve_endpoints,
)

DEFAULT_SIGNATURE_METHOD = "RSA-SHA1"


@dataclass(frozen=True)
class Problem:
    field: str  # as the providers file names it: base_url, endpoints, consumer_key, ...
    message: str  # whole, e.g. "field 'base_url' is required for kind 'jira-dc'"


def is_http_url(value: object) -> bool:
    try:
        URLValidator(schemes=["http", "https"])(value)
    except ValidationError:
        return False
    return True


def private_key_problem(pem: str) -> str | None:
    """Why `pem` cannot sign RSA-SHA1 requests, or None when it can."""
    if not pem:
        return "is required for RSA-SHA1"
    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        return "is not an unencrypted PEM private key"
    if not isinstance(key, rsa.RSAPrivateKey):
        return "must be an RSA key for RSA-SHA1"
    return None


def app_problems(
    kind: ProviderKind,
    *,
    client_id: str,
    base_url: str,
    endpoints: object,
    signature_method: str,
    secret: str,
    private_key: str,
) -> list[Problem]:
    """Everything wrong with an app of `kind` set up this way, in the order a reader fixes
    it; empty when the app can be used. `secret` is the client secret (OAuth 2.0) or the
    consumer secret (OAuth 1.0a HMAC-SHA1); `private_key` the RSA-SHA1 consumer's PEM."""
    problems: list[Problem] = []
    if not isinstance(endpoints, Mapping):
        return [Problem("endpoints", "field 'endpoints' must be a table")]
    allowed_endpoints = ENDPOINT_NAMES[kind.protocol]
    for name, url in endpoints.items():
        if name not in allowed_endpoints:
            problems.append(
                Problem(
                    "endpoints",
                    f"endpoints.{name} is not an endpoint of a {kind.protocol} app "
                    f"({', '.join(allowed_endpoints)})",
                )
            )
        elif not is_http_url(url):
            problems.append(Problem("endpoints", f"endpoints.{name} is not an http(s) URL"))
    if base_url and not is_http_url(base_url):
        problems.append(Problem("base_url", "field 'base_url' is not an http(s) URL"))
    elif not base_url and kind.requires_base_url:
        problems.append(Problem("base_url", f"field 'base_url' is required for kind {kind.name!r}"))
    elif not problems:
        resolved = resolve_endpoints(kind, base_url, dict(endpoints))
        for name in REQUIRED_ENDPOINTS[kind.protocol]:
            if name not in resolved:
                problems.append(
                    Problem("endpoints", f"endpoints.{name} is required for kind {kind.name!r}")
                )

    if kind.protocol == "api_token":
        return problems  # no client: each grant holds its user's own credential
    if kind.protocol == "oauth2":
        if not client_id:
            problems.append(Problem("client_id", "field 'client_id' is required"))
        if not secret:
            problems.append(Problem("client_secret", "field 'client_secret' is required"))
        return problems
    if not client_id:
        problems.append(Problem("consumer_key", "field 'consumer_key' is required"))
    method = signature_method or DEFAULT_SIGNATURE_METHOD
    if method not in kind.signature_methods:
        problems.append(
            Problem(
                "signature_method",
                "field 'signature_method' must be one of " + ", ".join(kind.signature_methods),
            )
        )
    elif method == "RSA-SHA1":
        key_problem = private_key_problem(private_key)
        if key_problem:
            problems.append(Problem("private_key", f"field 'private_key': {key_problem}"))
    elif not secret:
        problems.append(
            Problem("consumer_secret", "field 'consumer_secret' is required for HMAC-SHA1")
        )
    return problems
