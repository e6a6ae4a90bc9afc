"""Who is calling the internal API, past the token endpoint: every endpoint but
/api/v1/oauth/token takes the broker token (broker.service_identity.tokens) as
`Authorization: Bearer` (RFC 6750): its signature in memory, the service's state in the
database (one indexed read), its rate in Redis. Client authentication at the token endpoint
is broker.service_identity.client_authentication.
"""

from __future__ import annotations

from django.http import HttpRequest

from broker.api import ratelimit
from broker.api.errors import ApiError
from broker.audit import trail
from broker.infra.client_address import client_ip
from broker.infra.shared_round_trip import shared_round_trip
from broker.service_identity import tokens

BEARER_CHALLENGE = 'Bearer realm="broker"'
# Sent with 401 invalid_client at the token endpoint (RFC 6749 5.2).
BASIC_CHALLENGE = 'Basic realm="broker"'


class ServiceRequest(HttpRequest):
    """A request that passed `authenticate_bearer`."""

    broker_token: tokens.BrokerToken


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
