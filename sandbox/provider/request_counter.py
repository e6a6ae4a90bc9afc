"""Counts every request the sandbox receives (outside /_sandbox/), by method and path
without the query string, when the test switches are on: a test can then check that a
call reached the provider exactly once, or not at all (`GET /_sandbox/counters`)."""

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from sandbox.provider import switches


class RequestCounterMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if settings.SANDBOX_TEST_SWITCHES and not request.path.startswith("/_sandbox/"):
            switches.count_request(request.method or "", request.path)
        return self.get_response(request)
