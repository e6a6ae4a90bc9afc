"""Typed errors: the broker's JSON errors `{"error": code, "error_description": text}`.

Every exception the client raises for a failed call is a `BrokerError` carrying the broker's
`error` code, its description and the HTTP status; the subclasses say what to do next.
"""

from __future__ import annotations

from typing import Any


class BrokerError(Exception):
    """A call to the broker failed. `error` is the broker's code (RFC 6749 5.2 style)."""

    def __init__(
        self,
        error: str,
        description: str = "",
        *,
        status: int | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description
        self.status = status
        # Seconds the broker asked the caller to wait (Retry-After), when it said.
        self.retry_after = retry_after


class InvalidRequest(BrokerError):
    """400 (or 415): the request is malformed; the description names the field."""


class InvalidTarget(InvalidRequest):
    """400 `invalid_target` (token exchange, RFC 8693 2.2.2): this service may not use that
    app for the user, or the user has no grant of it."""


class ApiTokenGrant(InvalidRequest):
    """400 `api_token_grant`: the grant holds an API token (Atlassian Basic auth), which the
    broker never hands out; call the provider through the broker's proxy instead."""


class AuthenticationError(BrokerError):
    """401: the broker refused the service's credentials (`invalid_client`), or its broker
    token even after one fresh authentication (`invalid_token`)."""


class Forbidden(BrokerError):
    """403: the service's access rules do not allow this (`access_denied`)."""


class InsufficientScope(Forbidden):
    """403 `insufficient_scope`: a scope asked for lies outside the rules or the grant."""


class NotFound(BrokerError):
    """404: no such grant, user or provider visible to this service."""


class ReconnectRequired(BrokerError):
    """409: the grant is dead or revoked; the user must connect again (see connect_link)."""


class RateLimited(BrokerError):
    """429: too many requests from this service; wait `retry_after` seconds."""


class ProviderUnavailable(BrokerError):
    """503: the provider is failing and no valid token is left; retry after `retry_after`."""


class BrokerUnreachable(BrokerError):
    """The broker could not be reached, or answered something that is not its API."""


_BY_STATUS: dict[int, type[BrokerError]] = {
    400: InvalidRequest,
    401: AuthenticationError,
    403: Forbidden,
    404: NotFound,
    409: ReconnectRequired,
    415: InvalidRequest,
    429: RateLimited,
    503: ProviderUnavailable,
}


# Codes that say more than their status.
_BY_CODE: dict[tuple[int, str], type[BrokerError]] = {
    (403, "insufficient_scope"): InsufficientScope,
    (400, "invalid_target"): InvalidTarget,
    (400, "api_token_grant"): ApiTokenGrant,
}


def _seconds(retry_after: str | None) -> int | None:
    """Retry-After in delta-seconds, the form the broker sends (RFC 9110 10.2.3)."""
    if retry_after is None or not retry_after.strip().isdigit():
        return None
    return int(retry_after)


def error_for(status: int, payload: Any, retry_after: str | None = None) -> BrokerError:
    """The exception for an error response with JSON `payload` (None when not JSON)."""
    if isinstance(payload, dict) and isinstance(payload.get("error"), str):
        error, description = payload["error"], str(payload.get("error_description", ""))
    else:
        error, description = "unexpected_response", f"HTTP {status} without a JSON error"
    cls = _BY_STATUS.get(status, BrokerUnreachable if status >= 500 else BrokerError)
    cls = _BY_CODE.get((status, error), cls)
    return cls(error, description, status=status, retry_after=_seconds(retry_after))
