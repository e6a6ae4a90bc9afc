"""`/_sandbox/` JSON endpoints for tests; they 404 unless SANDBOX_TEST_SWITCHES=1."""

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import wraps

from django.conf import settings
from django.contrib.auth import get_user_model
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from sandbox.provider import api_tokens, identity, switches
from sandbox.provider.models import FaultMode


def switch(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    @wraps(view)
    def wrapper(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        if not settings.SANDBOX_TEST_SWITCHES:
            raise Http404("test switches are off")
        return view(request, *args, **kwargs)

    return csrf_exempt(wrapper)


def bad_request(message: str) -> JsonResponse:
    return JsonResponse({"error": "invalid_request", "error_description": message}, status=400)


def json_object(request: HttpRequest) -> dict | None:
    try:
        data = json.loads(request.body or b"{}")
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


@switch
@require_POST
def faults(request: HttpRequest) -> JsonResponse:
    data = json_object(request)
    if data is None:
        return bad_request("body must be a JSON object")
    mode = data.get("mode", FaultMode.NONE)
    if mode not in FaultMode.values:
        return bad_request(f"mode must be one of {FaultMode.values}")
    try:
        delay = float(data.get("delay") or 0)
        retry_after = int(data.get("retry_after") or 1)
        times = None if data.get("times") is None else int(data["times"])
    except (TypeError, ValueError):
        return bad_request("delay must be a number, retry_after and times integers")
    switches.set_fault(mode, delay, retry_after, times)
    return JsonResponse({"mode": mode, "delay": delay, "retry_after": retry_after, "times": times})


@switch
@require_GET
def counters(request: HttpRequest) -> JsonResponse:
    return JsonResponse(switches.counter_values())


@switch
@require_POST
def reset_counters(request: HttpRequest) -> JsonResponse:
    switches.reset_counters()
    return JsonResponse(switches.counter_values())


@switch
@require_POST
def revoke_user(request: HttpRequest) -> JsonResponse:
    data = json_object(request) or {}
    username = str(data.get("username", ""))
    if not switches.revoke_user_tokens(username):
        return JsonResponse({"error": "not_found", "error_description": "no such user"}, status=404)
    return JsonResponse({"revoked": username, **switches.live_token_counts(username)})


@switch
@require_POST
def expire_access_tokens(request: HttpRequest) -> JsonResponse:
    data = json_object(request) or {}
    username = str(data.get("username", ""))
    if not switches.expire_access_tokens(username):
        return JsonResponse({"error": "not_found", "error_description": "no such user"}, status=404)
    return JsonResponse({"expired": username, **switches.live_token_counts(username)})


@switch
@require_GET
def tokens(request: HttpRequest) -> JsonResponse:
    return JsonResponse(switches.live_token_counts(request.GET.get("username", "")))


@switch
@require_POST
def token_history(request: HttpRequest) -> JsonResponse:
    data = json_object(request)
    digests = None if data is None else data.get("access_tokens")
    if not isinstance(digests, list) or not all(isinstance(d, str) for d in digests):
        return bad_request("access_tokens must be a list of SHA-256 hex digests")
    return JsonResponse(switches.token_history(digests))


@switch
@require_POST
def groups(request: HttpRequest) -> JsonResponse:
    """Sets a demo user's groups, as an IdP administrator would between two sign-ins."""
    data = json_object(request) or {}
    username, names = str(data.get("username", "")), data.get("groups")
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        return bad_request("groups must be a list of names")
    if not switches.set_groups(username, names):
        return JsonResponse({"error": "not_found", "error_description": "no such user"}, status=404)
    return JsonResponse({"username": username, "groups": sorted(names)})


@switch
@require_POST
def api_token(request: HttpRequest) -> JsonResponse:
    """Makes an API token for a demo user, expiring in `days` (default 30; 0 or less: an
    already expired one), as the user would on the API tokens page."""
    data = json_object(request) or {}
    user = get_user_model().objects.filter(username=str(data.get("username", ""))).first()
    if user is None:
        return JsonResponse({"error": "not_found", "error_description": "no such user"}, status=404)
    try:
        days = int(data.get("days", 30))
    except (TypeError, ValueError):
        return bad_request("days must be an integer")
    expires_on = datetime.now(UTC).date() + timedelta(days=days)
    return JsonResponse(
        {
            "email": identity.email(user),
            "api_token": api_tokens.issue(user, expires_on),
            "expires_on": f"{expires_on:%Y-%m-%d}",
        }
    )
