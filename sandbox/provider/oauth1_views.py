"""Jira Data Center's OAuth 1.0a endpoints (`/plugins/servlet/oauth/...`) on oauthlib."""

import secrets
import time
from urllib.parse import quote, urlencode, urlparse, urlunparse

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_POST
from oauthlib.common import Request, add_params_to_uri
from oauthlib.common import urlencoded as URLENCODED_SAFE
from oauthlib.oauth1 import (
    AccessTokenEndpoint,
    AuthorizationEndpoint,
    RequestTokenEndpoint,
    ResourceEndpoint,
)

from sandbox.provider import switches
from sandbox.provider.models import (
    OAUTH1_ACCESS_TOKEN_SECONDS,
    OAUTH1_DENIED_VERIFIER,
    OAuth1RequestToken,
)
from sandbox.provider.oauth1_validator import SandboxOAuth1Validator

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
TIMESTAMP_LIFETIME = 600


def signed_uri(request: HttpRequest) -> str:
    """The absolute URI as the client signed it, escaped the way oauthlib expects."""
    parts = urlparse(request.build_absolute_uri())
    unsafe = set(parts.query) - URLENCODED_SAFE
    query = parts.query
    for char in unsafe:
        query = query.replace(char, quote(char, safe=""))
    return urlunparse(parts._replace(query=query))


def signed_body(request: HttpRequest) -> str:
    # RFC 5849 3.4.1.3.1: only form-encoded bodies are part of the signature.
    if request.content_type != FORM_CONTENT_TYPE:
        return ""
    return request.body.decode("utf-8", errors="replace")


def signed_headers(request: HttpRequest) -> dict[str, str]:
    headers = {"Content-Type": request.META.get("CONTENT_TYPE", "")}
    if "Authorization" in request.headers:
        headers["Authorization"] = request.headers["Authorization"]
    return headers


def oauth_problem(problem: str, status: int = 401) -> HttpResponse:
    """Jira's error form: a form-encoded `oauth_problem` body and WWW-Authenticate."""
    response = HttpResponse(
        urlencode({"oauth_problem": problem}),
        status=status,
        content_type=FORM_CONTENT_TYPE,
    )
    if status == 401:
        response["WWW-Authenticate"] = f'OAuth realm="sandbox", oauth_problem="{problem}"'
    return response


def problem_from_oauthlib_error(body: str) -> tuple[str, int]:
    """Map oauthlib's `error=invalid_request&error_description=...` to Jira's codes."""
    if "Timestamp" in body:
        return "timestamp_refused", 401
    if "Invalid+signature" in body or "not+in" in body:
        return "signature_method_rejected", 401
    if "Missing" in body:
        return "parameter_absent", 400
    return "parameter_rejected", 400


def token_endpoint_response(
    validator: SandboxOAuth1Validator, headers: dict, body: str | None, status: int
) -> HttpResponse:
    if status == 200:
        return HttpResponse(body, status=200, content_type=FORM_CONTENT_TYPE)
    if status == 401:
        return oauth_problem(validator.problem())
    problem, status = problem_from_oauthlib_error(body or "")
    return oauth_problem(problem, status)


@csrf_exempt
@require_POST
def request_token(request: HttpRequest) -> HttpResponse:
    """RFC 5849 2.1 temporary credentials."""
    validator = SandboxOAuth1Validator()
    headers, body, status = RequestTokenEndpoint(validator).create_request_token_response(
        signed_uri(request),
        request.method,
        signed_body(request),
        signed_headers(request),
    )
    return token_endpoint_response(validator, headers, body, status)


@csrf_exempt
@require_POST
def access_token(request: HttpRequest) -> HttpResponse:
    """RFC 5849 2.3 token credentials, with Jira's extra expiry fields."""
    switches.increment("oauth1_access_token")
    validator = SandboxOAuth1Validator()
    lifetime = str(OAUTH1_ACCESS_TOKEN_SECONDS)
    credentials = {
        "oauth_expires_in": lifetime,
        "oauth_session_handle": secrets.token_urlsafe(24),
        "oauth_authorization_expires_in": lifetime,
    }
    headers, body, status = AccessTokenEndpoint(validator).create_access_token_response(
        signed_uri(request),
        request.method,
        signed_body(request),
        signed_headers(request),
        credentials=credentials,
    )
    return token_endpoint_response(validator, headers, body, status)


@login_required
@require_http_methods(["GET", "POST"])
def authorize(request: HttpRequest) -> HttpResponse:
    """RFC 5849 2.2 resource owner authorization: Allow or Deny."""
    token_value = request.GET.get("oauth_token", "")
    pending = (
        OAuth1RequestToken.objects.filter(token=token_value, verifier="")
        .select_related("consumer")
        .first()
    )
    if pending is None or pending.is_expired:
        return render(request, "sandbox/oauth1_error.html", status=400)
    if request.method == "GET":
        return render(request, "sandbox/oauth1_authorize.html", {"consumer": pending.consumer})
    if "allow" not in request.POST:
        return deny(pending)
    validator = SandboxOAuth1Validator(user=request.user)
    headers, _body, status = AuthorizationEndpoint(validator).create_authorization_response(
        signed_uri(request), "GET", "", {}, realms=[]
    )
    if status == 302:
        return HttpResponseRedirect(headers["Location"])
    # An "oob" callback: Jira shows the verifier for the user to copy.
    verifier = OAuth1RequestToken.objects.get(token=token_value).verifier
    return render(request, "sandbox/oauth1_verifier.html", {"verifier": verifier})


def deny(pending: OAuth1RequestToken) -> HttpResponse:
    """Jira sends the user back with `oauth_verifier=denied`; the token cannot be exchanged."""
    updated = OAuth1RequestToken.objects.filter(pk=pending.pk, verifier="").update(
        verifier=OAUTH1_DENIED_VERIFIER
    )
    if updated != 1 or pending.callback == "oob":
        return HttpResponse("Access denied.", content_type="text/plain")
    params = [
        ("oauth_token", pending.token),
        ("oauth_verifier", OAUTH1_DENIED_VERIFIER),
    ]
    return HttpResponseRedirect(add_params_to_uri(pending.callback, params))


def verify_oauth1(request: HttpRequest) -> tuple[Request | None, HttpResponse | None]:
    """Check an OAuth 1.0a signed resource request: (oauthlib request, or a 401)."""
    validator = SandboxOAuth1Validator()
    try:
        valid, oauth_request = ResourceEndpoint(validator).validate_protected_resource_request(
            signed_uri(request),
            request.method,
            signed_body(request),
            signed_headers(request),
        )
    except ValueError:
        return None, oauth_problem("parameter_rejected")
    if valid:
        return oauth_request, None
    return None, oauth_problem(resource_problem(validator, oauth_request))


def resource_problem(validator: SandboxOAuth1Validator, oauth_request: Request | None) -> str:
    """Why a resource request failed; oauthlib returns only False for several causes."""
    if oauth_request is None or not oauth_request.signature:
        return "parameter_absent"
    if validator.problems:
        return validator.problem()
    if not oauth_request.resource_owner_key:
        return "token_rejected"
    timestamp = oauth_request.timestamp or ""
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > TIMESTAMP_LIFETIME:
        return "timestamp_refused"
    if oauth_request.signature_method not in validator.allowed_signature_methods:
        return "signature_method_rejected"
    return "signature_invalid"
