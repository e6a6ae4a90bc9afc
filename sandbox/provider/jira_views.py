"""Jira REST resources, reachable with an OAuth 1.0a signature or an OAuth 2.0 bearer token."""

import json
from collections.abc import Callable
from functools import wraps

from django.http import HttpRequest, HttpResponse, JsonResponse, QueryDict
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods

from sandbox.provider import identity
from sandbox.provider.oauth1_views import FORM_CONTENT_TYPE, verify_oauth1
from sandbox.provider.oauth2_views import bearer_required


def jira_auth_required(
    view: Callable[..., HttpResponse],
) -> Callable[..., HttpResponse]:
    """Bearer tokens go to django-oauth-toolkit, everything else to OAuth 1.0a."""
    bearer_view = bearer_required(view)

    @wraps(view)
    def wrapper(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        if request.headers.get("Authorization", "").startswith("Bearer "):
            return bearer_view(request, *args, **kwargs)
        oauth_request, failure = verify_oauth1(request)
        if failure is not None:
            return failure
        request.user = oauth_request.user
        return view(request, *args, **kwargs)

    return wrapper


@csrf_exempt
@require_GET
@jira_auth_required
def myself(request: HttpRequest) -> JsonResponse:
    return JsonResponse(identity.jira_myself(request.user))


def form_params(request: HttpRequest) -> dict[str, str]:
    if request.content_type != FORM_CONTENT_TYPE:
        return {}
    return QueryDict(request.body).dict()


def json_params(request: HttpRequest) -> object:
    if request.content_type != "application/json" or not request.body:
        return None
    try:
        return json.loads(request.body)
    except ValueError:
        return None


@csrf_exempt
@require_http_methods(["GET", "POST", "PUT", "DELETE", "PATCH"])
@jira_auth_required
def echo(request: HttpRequest) -> JsonResponse:
    """Reflect a verified request, so tests can see exactly what was signed and sent."""
    return JsonResponse(
        {
            "method": request.method,
            "path": request.path,
            "query": request.GET.dict(),
            "form": form_params(request),
            "json": json_params(request),
            "user": request.user.get_username(),
        }
    )


@csrf_exempt
@require_http_methods(["POST"])
@jira_auth_required
def create_issue(request: HttpRequest) -> JsonResponse:
    """`POST /rest/api/2/issue`: like Data Center, refused by its XSRF check unless the
    request carries `X-Atlassian-Token: no-check`."""
    if request.headers.get("X-Atlassian-Token") != "no-check":
        return JsonResponse({"errorMessages": ["XSRF check failed"]}, status=403)
    return JsonResponse(
        {
            "id": "10001",
            "key": "ACME-1",
            "fields": json_params(request),
            "form": form_params(request),
            "user": request.user.get_username(),
        },
        status=201,
    )
