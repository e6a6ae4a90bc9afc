"""The "My connections" pages: the signed-in user's grants, Connect, Reconnect, Disconnect."""

from __future__ import annotations

import uuid

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods, require_POST

from accounts.requests import AuthenticatedRequest
from broker.audit import trail
from broker.consent.api_tokens import ApiTokenForm, ApiTokenRefused, store_api_token
from broker.consent.start import begin
from broker.models import Grant, ProviderApp
from broker.providers.api_token_auth import is_api_token_app
from broker.revocation.revoke import revoke_grant


def user_revoke_url(grant: Grant) -> str:
    """Where the user can also remove the broker's access at the provider, if known: the
    app's `account` endpoint (the kind's page, or the app's own, e.g. the sandbox's)."""
    return grant.provider_app.endpoint("account") or ""


@login_required
def my_connections(request: AuthenticatedRequest) -> HttpResponse:
    grants = list(
        Grant.objects.filter(user=request.user)
        .exclude(status=Grant.Status.REVOKED)
        .select_related("provider_app")
        .order_by("provider_app__name", "account_name")
    )
    # An app the user is connected to is reconnected from its grant's card, not offered
    # again under "Connect an account".
    connected = {grant.provider_app_id for grant in grants}
    apps = ProviderApp.objects.filter(enabled=True).exclude(pk__in=connected).order_by("name")
    return render(request, "connections/list.html", {"grants": grants, "apps": apps})


@login_required
@require_POST
def connect(request: AuthenticatedRequest, slug: str) -> HttpResponse:
    """The Connect (and Reconnect) button: a CSRF-protected POST that starts consent.
    Optional form fields: `scopes` (space-separated, narrows the app's; what the user's grant
    holds is always asked for too) and `return_to`."""
    app = get_object_or_404(ProviderApp, slug=slug, enabled=True)
    scopes = request.POST.get("scopes", "").split() or None
    return begin(request, app, scopes=scopes, return_to=request.POST.get("return_to", ""))


def users_live_grant(request: AuthenticatedRequest, grant_id: uuid.UUID) -> Grant:
    """The signed-in user's grant; another user's grant is as missing as a made-up id."""
    grant = (
        Grant.objects.select_related("provider_app")
        .filter(pk=grant_id, user=request.user)
        .exclude(status=Grant.Status.REVOKED)
        .first()
    )
    if grant is None:
        raise Http404("No such connection")
    return grant


@login_required
@require_http_methods(["GET", "POST"])
def disconnect(request: AuthenticatedRequest, grant_id: uuid.UUID) -> HttpResponse:
    """GET asks for confirmation; POST (CSRF-protected) revokes the grant here and, where
    the provider has a revocation endpoint, there too (RFC 7009, in the background)."""
    grant = users_live_grant(request, grant_id)
    if request.method == "POST":
        revoke_grant(
            grant.id,
            actor_type="user",
            actor=request.user.get_username(),
            reason="disconnected by user",
            request=request,
        )
        messages.success(request, f"{grant.provider_app.name} is disconnected.")
        return redirect("connections")
    context = {
        "grant": grant,
        "revocable_upstream": bool(grant.provider_app.endpoint("revoke")),
        "user_revoke_url": user_revoke_url(grant),
    }
    return render(request, "connections/disconnect.html", context)


@sensitive_post_parameters("api_token")
@login_required
@require_http_methods(["GET", "POST"])
def api_token(request: AuthenticatedRequest, slug: str) -> HttpResponse:
    """Storing an API token (apps of an "api_token" kind): the owner's email, the token and
    its expiry date. The token is checked at the provider before it is stored; storing a
    new token for the same account replaces the old one in the same grant."""
    app = get_object_or_404(ProviderApp, slug=slug, enabled=True)
    if not is_api_token_app(app):
        raise Http404("This app does not take API tokens")
    form = ApiTokenForm(request.POST if request.method == "POST" else None)
    if form.is_valid():
        try:
            grant, replaced = store_api_token(
                request.user,
                app,
                form,
                actor_type=trail.ActorType.USER,
                actor=request.user.get_username(),
                request=request,
            )
        except ApiTokenRefused as exc:
            form.add_error(None, str(exc))
        else:
            who = grant.account_name or grant.account_email
            done = "has a new API token" if replaced else "is connected"
            messages.success(request, f"{app.name} {done} ({who}).")
            return redirect("connections")
    status = 400 if form.is_bound else 200
    return render(request, "connections/api_token.html", {"app": app, "form": form}, status=status)
