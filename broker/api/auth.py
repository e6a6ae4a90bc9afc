"""Who is calling the internal API.

Two stages: at /api/v1/oauth/token a service authenticates itself (RFC 6749 2.3:
`client_secret_basic`, `client_secret_post`, or RFC 7523 `private_key_jwt`, or an app
token from a trusted identity provider, see broker.api.federation) and gets a broker token;
every other endpoint takes that token as `Authorization: Bearer` (RFC 6750): its signature
in memory, the service's state in the database (one indexed read), its rate in Redis.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from urllib.parse import unquote_plus

from django.http import HttpRequest

from broker.api import (
    client_assertions,
    federation,
    ratelimit,
    service_secrets,
    tokens,
)
from broker.api.errors import ApiError
from broker.api.schema import matchable
from broker.audit import trail
from broker.infra.client_address import client_ip
from broker.infra.shared_round_trip import shared_round_trip
from broker.models import ServiceClient

BEARER_CHALLENGE = 'Bearer realm="broker"'
BASIC_CHALLENGE = 'Basic realm="broker"'


class ServiceRequest(HttpRequest):
    """A request that passed `authenticate_bearer`."""

    broker_token: tokens.BrokerToken


# --- Stage 2: broker tokens on every API call -------------------------------------------


def _token_failure(
    request: HttpRequest, reason: str, client_id: str = "", status: int = 401
) -> ApiError:
    """401 invalid_token, audited; 429 unaudited for a caller beyond the failure throttle."""
    if ratelimit.count_failure("bearer", client_id, client_ip(request)):
        return ratelimit.Throttled()
    trail.service_event(
        "service.auth_failed",
        client_id,
        outcome=trail.Outcome.DENIED,
        request=request,
        reason=reason,
        path=request.path,
    )
    return ApiError(
        status,
        "invalid_token",
        "the broker token is missing, invalid, expired or no longer valid",
        {"WWW-Authenticate": f'{BEARER_CHALLENGE}, error="invalid_token"'},
    )


def granted_by(scope: str) -> str:
    """What an operator does to give the service `scope`, for a refusal's description."""
    if scope not in tokens.RULE_GRANTED_SCOPES:
        return ""
    flag, admin_field = tokens.RULE_GRANTED_SCOPES[scope]
    return (
        f": no access rule of this service has {flag} (`manage.py addaccessrule CLIENT_ID "
        f"--provider SLUG {flag}`; admin: {admin_field!r}); then get a new broker token"
    )


def authenticate_bearer(request: HttpRequest, scope: str | None) -> tokens.BrokerToken:
    """Checks the broker token, the service's state in the database (enabled, credentials
    generation) and its rate limit (one Redis round trip)."""
    scheme, _, value = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise ApiError(
            401,
            "invalid_token",
            "send Authorization: Bearer <broker token> (get one at /api/v1/oauth/token)",
            {"WWW-Authenticate": BEARER_CHALLENGE},
        )
    try:
        token = tokens.parse(value.strip())
    except tokens.InvalidToken as exc:
        raise _token_failure(request, str(exc)) from None
    if not tokens.is_current(token):
        raise _token_failure(request, "service disabled or credentials retired", token.client_id)
    # Shared with the other requests of the moment (a burst of callers at once).
    count, _ = shared_round_trip().execute(
        lambda pipe: ratelimit.queue_count(pipe, token.client_id)
    )
    if ratelimit.exceeded(count):
        trail.service_event(
            "token.denied",
            token.client_id,
            outcome=trail.Outcome.DENIED,
            request=request,
            reason="rate_limited",
            status=429,
            path=request.path,
        )
        raise ApiError(
            429,
            "rate_limited",
            "too many requests from this service; retry later",
            {"Retry-After": str(ratelimit.retry_after())},
        )
    if scope is not None and scope not in token.scopes:
        trail.service_event(
            "token.denied",
            token.client_id,
            outcome=trail.Outcome.DENIED,
            request=request,
            reason="insufficient_scope",
            status=403,
            required_scope=scope,
            path=request.path,
        )
        raise ApiError(
            403,
            "insufficient_scope",
            f"the broker token lacks the API scope {scope!r}{granted_by(scope)}",
            {"WWW-Authenticate": f'{BEARER_CHALLENGE}, error="insufficient_scope"'},
        )
    return token


# --- Stage 1: client authentication at the token endpoint -------------------------------


@dataclass(frozen=True)
class AuthenticatedClient:
    service: ServiceClient
    method: str
    # A secret in its grace period yields tokens that do not outlive the grace.
    not_after: float | None = None


class ClientAuthFailed(Exception):
    """RFC 6749 5.2 invalid_client; `reason` goes to the audit log, never to the caller."""

    def __init__(self, reason: str, client_id: str = "", method: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.client_id = client_id
        self.method = method


def _basic_credentials(request: HttpRequest) -> tuple[str, str] | None:
    """RFC 6749 2.3.1: client id and secret, each form-urlencoded, in HTTP Basic."""
    scheme, _, value = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ClientAuthFailed(
            "malformed basic credentials", method="client_secret_basic"
        ) from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise ClientAuthFailed("malformed basic credentials", method="client_secret_basic")
    return unquote_plus(client_id), unquote_plus(secret)


def _lookup(client_id: str) -> ServiceClient | None:
    if not client_id or len(client_id) > 64 or not matchable(client_id):
        return None
    return ServiceClient.objects.filter(client_id=client_id).first()


def _service(client_id: str, method: str) -> ServiceClient:
    service = _lookup(client_id)
    if service is None:
        raise ClientAuthFailed("unknown client", client_id, method)
    if not service.enabled:
        raise ClientAuthFailed("client disabled", client_id, method)
    return service


def _by_secret(client_id: str, secret: str, method: str) -> AuthenticatedClient:
    service = _lookup(client_id)
    # A digest is computed for unknown clients too, so timing does not reveal client ids.
    matched = service_secrets.matched_secret(service or ServiceClient(), secret)
    if service is None:
        raise ClientAuthFailed("unknown client", client_id, method)
    if not service.enabled:
        raise ClientAuthFailed("client disabled", client_id, method)
    if matched is None:
        raise ClientAuthFailed("wrong or expired secret", client_id, method)
    not_after = None
    if matched == "previous" and service.previous_secret_valid_until is not None:
        not_after = service.previous_secret_valid_until.timestamp()
    return AuthenticatedClient(service, method, not_after)


def _claimed_client_id(basic: tuple[str, str] | None, form: dict[str, str]) -> str:
    """Who the caller says it is, before any check: what the failure throttle counts."""
    if basic is not None:
        return basic[0]
    if form.get("client_id"):
        return form["client_id"]
    assertion = form.get("client_assertion", "")
    if federation.is_federated(assertion):
        return ""  # its iss is the identity provider, shared by all its applications
    try:
        return client_assertions.claimed_client_id(assertion)
    except client_assertions.AssertionRejected:
        return ""


def authenticate_client(request: HttpRequest, form: dict[str, str]) -> AuthenticatedClient:
    """Exactly one client authentication method per request (RFC 6749 2.3). Raises
    ratelimit.Throttled, before any credential is checked, for a caller whose failures
    reached the throttle's limit (the token endpoint counts them)."""
    basic = _basic_credentials(request)
    assertion_type = form.get("client_assertion_type")
    methods = [
        name
        for name, present in (
            ("client_secret_basic", basic is not None),
            ("client_secret_post", "client_secret" in form),
            ("private_key_jwt", assertion_type is not None or "client_assertion" in form),
        )
        if present
    ]
    if len(methods) > 1:
        raise ApiError(400, "invalid_request", "use exactly one client authentication method")
    if not methods:
        raise ClientAuthFailed("no client authentication")
    method = methods[0]
    ratelimit.check_failures("client", _claimed_client_id(basic, form), client_ip(request))
    if basic is not None:
        client_id, secret = basic
        if form.get("client_id", client_id) != client_id:
            raise ApiError(400, "invalid_request", "client_id differs from the Basic credentials")
        return _by_secret(client_id, secret, method)
    if method == "client_secret_post":
        if not form.get("client_id"):
            raise ApiError(400, "invalid_request", "client_id is required with client_secret")
        return _by_secret(form["client_id"], form["client_secret"], method)
    if assertion_type != client_assertions.ASSERTION_TYPE or not form.get("client_assertion"):
        raise ApiError(
            400,
            "invalid_request",
            f"client_assertion_type must be {client_assertions.ASSERTION_TYPE} "
            "with a client_assertion",
        )
    assertion = form["client_assertion"]
    if federation.is_federated(assertion):
        return _by_federated_token(assertion, form.get("client_id", ""))
    try:
        client_id = client_assertions.claimed_client_id(assertion)
    except client_assertions.AssertionRejected as exc:
        raise ClientAuthFailed(str(exc), form.get("client_id", ""), method) from None
    if form.get("client_id", client_id) != client_id:
        raise ClientAuthFailed("client_id differs from the assertion's iss", client_id, method)
    service = _service(client_id, method)
    try:
        client_assertions.verify(service, assertion)
    except client_assertions.AssertionRejected as exc:
        raise ClientAuthFailed(str(exc), client_id, method) from None
    return AuthenticatedClient(service, method)


def _by_federated_token(assertion: str, client_id: str) -> AuthenticatedClient:
    method = "federated_token"
    try:
        mapped = federation.verify(assertion)
    except federation.FederatedTokenRejected as exc:
        raise ClientAuthFailed(str(exc), client_id, method) from None
    if client_id and client_id != mapped:
        raise ClientAuthFailed("client_id differs from the mapped application", client_id, method)
    return AuthenticatedClient(_service(mapped, method), method)
