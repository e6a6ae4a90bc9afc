"""Atlassian Cloud's REST API as a 3LO app sees it, under one API origin:
`/ex/jira/<cloud id>/rest/api/3/...` with a bearer token.

Like Atlassian, a token that lacks the scope an endpoint needs gets a 401 whose body says
`Unauthorized; scope does not match` (header `X-Failure-Category:
FAILURE_CLIENT_SCOPE_CHECK`): a refresh will not help. An expired or revoked token gets
a plain 401.
"""

import json
from collections.abc import Callable
from functools import wraps

from django.conf import settings
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
    JsonResponse,
    StreamingHttpResponse,
)
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from sandbox.provider import identity
from sandbox.provider.oauth2_views import bearer_required

SITE_IDS = {site["id"] for site in identity.SITES}
MAX_FILLER_BYTES = 64 * 1024 * 1024


def scope_mismatch() -> JsonResponse:
    response = JsonResponse(
        {"code": 401, "message": "Unauthorized; scope does not match"}, status=401
    )
    response["X-Failure-Category"] = "FAILURE_CLIENT_SCOPE_CHECK"
    return response


def cloud_api(
    *any_of_scopes: str,
) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """A bearer token of a site the user can reach, carrying one of `any_of_scopes`."""

    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        def checked(
            request: HttpRequest, cloud_id: str, *args: object, **kwargs: object
        ) -> HttpResponse:
            if cloud_id not in SITE_IDS:
                return JsonResponse({"errorMessages": ["Site not found"]}, status=404)
            if not set(request.oauth2_token.scope.split()) & set(any_of_scopes):
                return scope_mismatch()
            return view(request, cloud_id, *args, **kwargs)

        return csrf_exempt(bearer_required(checked))

    return decorate


@require_GET
@cloud_api("read:jira-user", "read:jira-work")
def myself(request: HttpRequest, cloud_id: str) -> JsonResponse:
    user = request.user
    return JsonResponse(
        {
            "accountId": f"sandbox-{user.get_username()}",
            "emailAddress": identity.email(user),
            "displayName": identity.display_name(user),
            "active": True,
            "timeZone": "UTC",
        }
    )


@require_POST
@cloud_api("read:jira-work")
def search(request: HttpRequest, cloud_id: str) -> JsonResponse:
    """`POST /rest/api/3/search`: echoes the JQL and the query string; finds nothing."""
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return JsonResponse({"errorMessages": ["Invalid JSON"]}, status=400)
    return JsonResponse(
        {
            "jql": body.get("jql") if isinstance(body, dict) else None,
            "query": request.GET.dict(),
            "user": request.user.get_username(),
            "startAt": 0,
            "total": 0,
            "issues": [],
        }
    )


@require_POST
@cloud_api("write:jira-work")
def create_issue(request: HttpRequest, cloud_id: str) -> JsonResponse:
    return JsonResponse({"id": "10001", "key": "ACME-1"}, status=201)


@require_GET
@cloud_api("read:jira-work")
def attachment_content(request: HttpRequest, cloud_id: str, attachment_id: str) -> HttpResponse:
    """As Jira Cloud does: a redirect to where the bytes are (never followed by the broker)."""
    return HttpResponseRedirect(f"{settings.SANDBOX_PUBLIC_URL}/_media/{attachment_id}", status=303)


@require_GET
@cloud_api("read:jira-work")
def filler(request: HttpRequest, cloud_id: str) -> HttpResponse:
    """`?bytes=N` bytes of text (test-only), with a Content-Length, or streamed in chunks
    without one (`&chunked=1`): for the proxy's response size limit."""
    try:
        size = min(int(request.GET.get("bytes", "0")), MAX_FILLER_BYTES)
    except ValueError:
        return JsonResponse({"errorMessages": ["bytes must be an integer"]}, status=400)
    if request.GET.get("chunked") == "1":
        chunk = b"x" * 65536

        def chunks():
            left = size
            while left > 0:
                yield chunk[: min(left, len(chunk))]
                left -= len(chunk)

        return StreamingHttpResponse(chunks(), content_type="text/plain")
    return HttpResponse(b"x" * size, content_type="text/plain")
