"""Sign-in and sign-out pages: the password form (unless BROKER_PASSWORD_LOGIN=0) and
single sign-on with the company's OpenID Connect provider (accounts.oidc_client)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import login, logout
from django.contrib.auth import views as auth_views
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from accounts import oidc_client
from accounts.external_identity import signed_in_user
from accounts.oidc_client import SignInRefused
from accounts.password_login import password_login_refused, sign_in_choices

NEXT_KEY = "oidc_next"
SSO_SESSION_KEY = "oidc_signed_in"  # sign-out then ends the IdP's session too


def refused(request: HttpRequest, refusal: SignInRefused, status: int = 400) -> HttpResponse:
    return render(
        request,
        "accounts/sso_refused.html",
        {"title": refusal.title, "message": refusal.message},
        status=status,
    )


class LoginView(auth_views.LoginView):
    """Django's sign-in page, with the single sign-on button; without the password form,
    and refusing password posts, when BROKER_PASSWORD_LOGIN=0."""

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not settings.BROKER_PASSWORD_LOGIN:
            return password_login_refused(request)
        return super().post(request, *args, **kwargs)

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        return {**super().get_context_data(**kwargs), **sign_in_choices()}


def safe_next(request: HttpRequest, value: str) -> str:
    if value and url_has_allowed_host_and_scheme(
        value, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return value
    return settings.LOGIN_REDIRECT_URL


@require_GET
def oidc_login(request: HttpRequest) -> HttpResponse:
    """Starts single sign-on: the sign-in page's `data-sso="oidc"` button."""
    if not oidc_client.enabled():
        raise Http404("single sign-on is not configured")
    request.session[NEXT_KEY] = safe_next(request, request.GET.get("next", ""))
    try:
        return oidc_client.authorize_redirect(request)
    except SignInRefused as refusal:
        return refused(request, refusal, status=502)


@require_GET
def oidc_callback(request: HttpRequest) -> HttpResponse:
    """The redirect URI registered at the IdP: `<BROKER_PUBLIC_URL>/accounts/oidc/callback`."""
    if not oidc_client.enabled():
        raise Http404("single sign-on is not configured")
    try:
        claims = oidc_client.verified_claims(request)
        user = signed_in_user(settings.BROKER_OIDC_ISSUER, claims)
    except SignInRefused as refusal:
        return refused(request, refusal)
    next_url = request.session.pop(NEXT_KEY, settings.LOGIN_REDIRECT_URL)
    # The ID token is not kept: sessions live in the database, and the token would outlive
    # its need there (sign-out names the broker's client instead, accounts.oidc_client).
    login(request, user, backend=settings.AUTHENTICATION_BACKENDS[0])
    request.session[SSO_SESSION_KEY] = True
    return HttpResponseRedirect(safe_next(request, next_url))


@require_POST
def logout_view(request: HttpRequest) -> HttpResponse:
    """Signs out here, then at the IdP too when it has an end_session_endpoint and the
    person signed in with single sign-on."""
    signed_in_with_sso = request.session.get(SSO_SESSION_KEY, False)
    logout(request)
    if signed_in_with_sso and oidc_client.enabled():
        url = oidc_client.logout_url()
        if url:
            return HttpResponseRedirect(url)
    return HttpResponseRedirect(settings.LOGOUT_REDIRECT_URL)
