"""OAuth 2.0 endpoints around django-oauth-toolkit, and the Atlassian-shaped resources."""

import time
from collections.abc import Callable
from functools import wraps

from django.conf import settings
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_GET, require_POST
from oauth2_provider.models import Application
from oauth2_provider.oauth2_backends import get_oauthlib_core
from oauth2_provider.views import RevokeTokenView, TokenView

from sandbox.provider import identity, switches
from sandbox.provider.models import FaultMode
from sandbox.provider.oauth2_backend import token_request_params

dot_token_view = TokenView.as_view()
dot_revoke_view = RevokeTokenView.as_view()


def fault_response(fault: switches.Fault) -> HttpResponse | None:
    """The injected failure for this request, or None to handle it normally."""
    if fault.mode == FaultMode.ERROR500:
        return JsonResponse({"error": "server_error"}, status=500)
    if fault.mode == FaultMode.RATELIMIT:
        response = JsonResponse({"error": "rate_limited"}, status=429)
        response["Retry-After"] = str(fault.retry_after)
        return response
    if fault.mode == FaultMode.SLOW:
        time.sleep(fault.delay)
    return None


def dc_refresh_without_its_redirect_uri(request: HttpRequest, params: dict[str, str]) -> bool:
    """Jira Data Center wants a refresh to repeat the consent's redirect_uri (a bare
    invalid_grant otherwise); DOT does not check it, so this does, against the URIs the
    client registered."""
    if request.resolver_match is None or request.resolver_match.url_name != "dc-token":
        return False
    if params.get("grant_type") != "refresh_token":
        return False
    client = Application.objects.filter(client_id=params.get("client_id", "")).first()
    redirect_uri = params.get("redirect_uri", "")
    return client is None or not redirect_uri or not client.redirect_uri_allowed(redirect_uri)


@csrf_exempt
@require_POST
@sensitive_post_parameters("client_secret", "code", "refresh_token")
def token(request: HttpRequest) -> HttpResponse:
    """RFC 6749 3.2 token endpoint: JSON, form or query-string parameters."""
    params = token_request_params(request)
    grant_type = params.get("grant_type", "unknown")
    switches.increment(f"token:{grant_type}")
    fault = switches.claim_fault()
    if fault is not None:
        failure = fault_response(fault)
        if failure is not None:
            return failure
    if dc_refresh_without_its_redirect_uri(request, params):
        return JsonResponse({"error": "invalid_grant"}, status=400)
    # One transaction around validation and rotation: on SQLite (IMMEDIATE mode) it holds
    # the write lock throughout, so two refreshes racing with the same token are handled
    # one after the other and the loser is a reuse (invalid_grant), as at Atlassian after
    # its grace period. Without it, django-oauth-toolkit hands both callers the same pair.
    with transaction.atomic():
        if grant_type == "refresh_token" and settings.SANDBOX_TEST_SWITCHES:
            # Counted only when the token is really looked at: a 500 or 429 consumes nothing.
            switches.record_refresh_presented(params.get("refresh_token", ""))
        return dot_token_view(request)


@csrf_exempt
@require_POST
@sensitive_post_parameters("client_secret", "token")
def revoke(request: HttpRequest) -> HttpResponse:
    """RFC 7009 token revocation."""
    switches.increment("revoke")
    return dot_revoke_view(request)


def unauthorized(message: str) -> JsonResponse:
    response = JsonResponse({"code": 401, "message": message}, status=401)
    response["WWW-Authenticate"] = 'Bearer realm="sandbox"'
    return response


def bearer_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Accept only a live DOT access token (RFC 6750); sets request.oauth2_token."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return unauthorized("Unauthorized; bearer token missing")
        valid, oauth_request = get_oauthlib_core().verify_request(request, scopes=[])
        if not valid:
            return unauthorized("Unauthorized; invalid or expired token")
        request.oauth2_token = oauth_request.access_token
        request.user = oauth_request.user
        return view(request, *args, **kwargs)

    return wrapper


@require_GET
@bearer_required
def me(request: HttpRequest) -> JsonResponse:
    return JsonResponse(identity.atlassian_me(request.user))


@require_GET
@bearer_required
def accessible_resources(request: HttpRequest) -> JsonResponse:
    scopes = request.oauth2_token.scope.split()
    return JsonResponse(identity.accessible_resources(scopes), safe=False)
