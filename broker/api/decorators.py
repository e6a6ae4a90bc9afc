"""The wrapper every internal API view runs in: method, broker token, JSON errors, audit."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import wraps
from typing import Any

import redis
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from broker.api.auth import authenticate_bearer
from broker.api.errors import ApiError
from broker.audit import trail
from broker.ops.database_busy import busy_response, is_database_busy
from broker.ops.error_pages import error_response
from broker.ops.logging_config import name_service

log = logging.getLogger(__name__)

# A Redis outage (restart, failover) lasts seconds: the service is told when to come back.
REDIS_DOWN_RETRY_AFTER_SECONDS = 2

View = Callable[..., HttpResponseBase]
ANY_METHOD = "*"  # the proxy's: every method is forwarded


def redis_down_response(request: HttpRequest, exc: redis.RedisError) -> HttpResponse:
    """The JSON 503 of an endpoint that cannot work without Redis (rate limits, throttles,
    broker tokens): an outage the caller retries, never a 500."""
    log.warning("Redis unavailable on %s: %s", request.path, type(exc).__name__)
    return error_response(
        503,
        "temporarily_unavailable",
        "the broker cannot reach Redis; retry shortly",
        {"Retry-After": str(REDIS_DOWN_RETRY_AFTER_SECONDS)},
    )


def audit_refusal(action: str, client_id: str, request: HttpRequest, exc: ApiError) -> None:
    """The audit row of a refusal to an identified service: why, and what it concerned."""
    trail.service_event(
        action,
        client_id,
        outcome=trail.Outcome.DENIED,
        request=request,
        reason=exc.error,
        status=exc.status,
        description=exc.description,
        **exc.audit,
    )


def outages_answered(view: View) -> View:
    """For the views outside `api_view` (the token endpoint): Redis down or the database
    busy is a JSON 503 with Retry-After, not a 500."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        try:
            return view(request, *args, **kwargs)
        except redis.RedisError as exc:
            return redis_down_response(request, exc)
        except Exception as exc:
            if is_database_busy(exc):
                return busy_response(request)
            raise

    return wrapper


def api_view(
    method: str,
    *,
    scope: str | None = None,
    authenticated: bool = True,
    denied: str = "",
) -> Callable[[View], View]:
    """Wraps a machine endpoint (csrf_exempt: it takes no cookies, only bearer tokens).

    `scope`: the API scope the broker token must carry. `denied`: the audit action written
    for every refusal after the service was identified (e.g. `token.denied`).
    """

    def decorate(view: View) -> View:
        @csrf_exempt
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            token = None
            try:
                if method != ANY_METHOD and request.method != method:
                    raise ApiError(
                        405,
                        "method_not_allowed",
                        f"use {method} for this endpoint",
                        {"Allow": method},
                    )
                if authenticated:
                    token = authenticate_bearer(request, scope)
                    request.broker_token = token  # type: ignore[attr-defined]
                    name_service(request, token.client_id)
                return view(request, *args, **kwargs)
            except ApiError as exc:
                if token is not None and denied:
                    audit_refusal(denied, token.client_id, request, exc)
                return exc.response()
            except redis.RedisError as exc:
                # Broker tokens cannot be checked without Redis (a disabled service's
                # tokens must stop at once): refuse, as an outage, not as a failure.
                return redis_down_response(request, exc)
            except Exception as exc:
                if is_database_busy(exc):
                    return busy_response(request)
                log.exception("internal API error on %s", request.path)
                return error_response(500, "server_error", "the broker failed; try again later")

        return wrapper

    return decorate
