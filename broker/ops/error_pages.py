"""Django's 400 handler (urls.handler400), also answering broker.ops.request_guard's refusals: a
malformed request (a body over DATA_UPLOAD_MAX_MEMORY_SIZE, too many fields, an unknown
Host, a NUL in the URL) ends as the internal API's JSON error under /api/, and as a page in
the browser. `error_response` is the one JSON error body: the internal API's refusals
(broker.api.errors) and the middleware's (broker.ops.database_busy) share it."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

# Descriptions may quote what the caller sent (a parameter name, a scope): never echo more
# than this, whatever the caller sent.
DESCRIPTION_LIMIT = 300


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if request.path.startswith("/api/"):
        return error_response(400, "invalid_request", "the request is malformed or too large")
    return render(request, "400.html", status=400)


def error_response(
    status: int, error: str, description: str, headers: dict[str, str] | None = None
) -> JsonResponse:
    if len(description) > DESCRIPTION_LIMIT:
        description = description[: DESCRIPTION_LIMIT - 1] + "…"
    response = JsonResponse({"error": error, "error_description": description}, status=status)
    response["Cache-Control"] = "no-store"
    for name, value in (headers or {}).items():
        response[name] = value
    return response
