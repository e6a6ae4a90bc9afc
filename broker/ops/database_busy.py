"""No free database connection: 503 with Retry-After, never a 500.

Each process holds a bounded pool of PostgreSQL connections (settings: BROKER_DB_POOL_*).
A request that finds every connection in use waits BROKER_DB_POOL_TIMEOUT seconds, then
psycopg_pool raises PoolTimeout (Django wraps it in OperationalError). Without the pool, or
when the server itself is full, PostgreSQL refuses the connection with SQLSTATE 53300
("sorry, too many clients already", "too many connections for role"). A pooled connection
that the server ended (a restart, pg_terminate_backend: SQLSTATE 57P01-57P03, or class 08)
fails the one query that finds it dead, and the pool then drops it; when the server's
goodbye never arrived (the socket closed under a restart, a network cut) libpq says so
only in words. All mean the same to the caller: busy, try again in a moment.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.contrib.auth.models import AnonymousUser
from django.db import OperationalError
from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string
from psycopg_pool import PoolTimeout

from broker.ops.error_pages import error_response

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 2
TOO_MANY_CONNECTIONS = "53300"
TOO_MANY_CONNECTIONS_TEXT = ("too many clients", "too many connections")
# admin_shutdown, crash_shutdown, cannot_connect_now; class 08 is "connection exception".
CONNECTION_ENDED = ("57P01", "57P02", "57P03")
# libpq's words for a connection lost without a SQLSTATE (found by the PostgreSQL drills).
CONNECTION_LOST_TEXT = (
    "server closed the connection unexpectedly",
    "could not receive data from server",
    "could not send data to server",
    "the connection is lost",
)


def is_database_busy(exc: BaseException) -> bool:
    """Whether `exc` means "no database connection to be had right now"."""
    if not isinstance(exc, OperationalError):
        return False
    cause = exc.__cause__ or exc
    if isinstance(cause, PoolTimeout):
        return True
    sqlstate = getattr(cause, "sqlstate", None) or ""
    if sqlstate == TOO_MANY_CONNECTIONS or sqlstate in CONNECTION_ENDED:
        return True
    if sqlstate.startswith("08"):
        return True
    # Refusals at connection time and connections lost mid-query carry no SQLSTATE in
    # psycopg: only the text.
    return any(text in str(cause) for text in TOO_MANY_CONNECTIONS_TEXT + CONNECTION_LOST_TEXT)


def busy_response(request: HttpRequest) -> HttpResponse:
    """JSON for the internal API, a page for browsers; both with Retry-After."""
    log.warning("no database connection free for %s %s: 503", request.method, request.path)
    # Whatever runs after this (the request log) must not wait for the database again.
    request.user = AnonymousUser()
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    if request.path.startswith("/api/"):
        return error_response(
            503, "temporarily_unavailable", "the broker is busy; retry shortly", headers
        )
    # Rendered without the request: its context processors would read the session.
    response = HttpResponse(render_to_string("busy.html"), status=503, headers=headers)
    response["Cache-Control"] = "no-store"
    return response


class DatabaseBusyMiddleware:
    """Turns a view's "no database connection" error into busy_response."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        return busy_response(request) if is_database_busy(exception) else None
