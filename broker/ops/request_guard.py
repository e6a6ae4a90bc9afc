"""Requests refused before any view sees them."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from broker.ops.error_pages import bad_request

# The proxy refuses such a path itself, as `invalid_path` with its `Broker-Error` header and
# an audit row (broker.catalog.proxy_paths), before any look-up.
PROXY_PREFIX = "/api/v1/proxy/"


class RefuseNulMiddleware:
    """A NUL character in the path or a query parameter is a 400 (JSON under /api/, a page
    in the browser: broker.ops.error_pages).

    No URL the broker serves or a provider sends back (callback `state`, `oauth_token`,
    admin search and filters) carries one, and PostgreSQL refuses to compare text holding
    it, so without this every view that looks a URL value up would fail with a 500.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        path_refused = "\x00" in request.path and not request.path_info.startswith(PROXY_PREFIX)
        if path_refused or any(
            "\x00" in name or any("\x00" in value for value in values)
            for name, values in request.GET.lists()
        ):
            # Answered here rather than raised: Django would log a traceback per request.
            return bad_request(request)
        return self.get_response(request)
