"""Atlassian-like API tokens: a demo user makes one (the page, or the test switch) and a
script sends it with the user's email as HTTP Basic auth (RFC 7617) to `/rest/api/3/...`.

Tokens are stateless: the user's id and the expiry date, MACed with the sandbox's secret
key, so no table is needed; a token works until the start of its expiry date (UTC).
"""

import base64
import binascii
import hashlib
import hmac
from datetime import UTC, date, datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import AbstractBaseUser
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods

from sandbox.provider import identity, switches

PREFIX = "ATATT"  # how Atlassian's API tokens begin
MAX_LIFETIME = timedelta(days=365)


def _mac(payload: str) -> str:
    key = settings.SECRET_KEY.encode()
    return hmac.new(key, f"api-token:{payload}".encode(), hashlib.sha256).hexdigest()[:32]


def issue(user: AbstractBaseUser, expires_on: date) -> str:
    payload = f"{user.pk}:{expires_on:%Y-%m-%d}"
    encoded = base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")
    return f"{PREFIX}{encoded}.{_mac(payload)}"


def user_for(email: str, token: str) -> AbstractBaseUser | None:
    """The user an email and API token authenticate, if they do and it has not expired."""
    encoded, _, mac = token.removeprefix(PREFIX).partition(".")
    try:
        payload = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
        user_pk, expires = payload.split(":", 1)
        expires_on = date.fromisoformat(expires)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    if not token.startswith(PREFIX) or not hmac.compare_digest(mac, _mac(payload)):
        return None
    if datetime.now(UTC).date() >= expires_on:
        return None
    user = get_user_model().objects.filter(pk=user_pk, is_active=True).first()
    if user is None or identity.email(user) != email:
        return None
    return user


def basic_user(request: HttpRequest) -> AbstractBaseUser | None:
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        email, _, token = base64.b64decode(credentials, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return user_for(email, token)


@csrf_exempt
@require_GET
def myself(request: HttpRequest) -> JsonResponse:
    """Atlassian Cloud's `GET /rest/api/3/myself`, with Basic auth (email + API token)."""
    switches.increment("api_token_basic")
    user = basic_user(request)
    if user is None:
        response = JsonResponse(
            {
                "message": "Client must be authenticated to access this resource.",
                "status-code": 401,
            },
            status=401,
        )
        response["WWW-Authenticate"] = 'Basic realm="protected-area"'
        return response
    me = identity.atlassian_me(user)
    return JsonResponse(
        {
            "accountId": me["account_id"],
            "emailAddress": me["email"],
            "displayName": me["name"],
            "active": True,
            "timeZone": "UTC",
            "accountType": "atlassian",
        }
    )


def default_expiry() -> date:
    return datetime.now(UTC).date() + timedelta(days=30)


@login_required
@require_http_methods(["GET", "POST"])
def manage(request: HttpRequest) -> HttpResponse:
    """The demo user's "API tokens" page: pick an expiry date, get a token shown once."""
    context: dict[str, object] = {
        "expires_on": default_expiry(),
        "email": identity.email(request.user),
    }
    if request.method == "POST":
        try:
            expires_on = date.fromisoformat(request.POST.get("expires_on", ""))
        except ValueError:
            expires_on = None
        today = datetime.now(UTC).date()
        if expires_on is None or not today < expires_on <= today + MAX_LIFETIME:
            context["error"] = "Choose an expiry date within the next year."
        else:
            context.update(expires_on=expires_on, token=issue(request.user, expires_on))
    return render(request, "sandbox/api_tokens.html", context)
