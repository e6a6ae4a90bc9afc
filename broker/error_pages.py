"""Django's 400 handler (urls.handler400), also answering broker.request_guard's refusals: a
malformed request (a body over DATA_UPLOAD_MAX_MEMORY_SIZE, too many fields, an unknown
Host, a NUL in the URL) ends as the internal API's JSON error under /api/, and as a page in
the browser."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from broker.api.errors import error_response


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if request.path.startswith("/api/"):
        return error_response(400, "invalid_request", "the request is malformed or too large")
    return render(request, "400.html", status=400)
