"""Connect links: a service sends one user, by URL, through consent and back.

The service gets `<BROKER_PUBLIC_URL>/connect-links/<token>`; only a SHA-256 digest of the
256-bit token is stored. The link is bound to one user, expires after ten minutes and works
once: the browser view consumes it with a conditional UPDATE (so two clicks cannot both
start a consent) only after the signed-in user proved to be the bound user, then hands over
to the OAuth flow (`broker.consent.start.begin`) with the link's scopes and return URL.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from accounts.models import User
from accounts.requests import AuthenticatedRequest
from broker.audit import trail
from broker.consent.start import begin
from broker.models import ConnectLink, ProviderApp
from broker.ops.security_headers import no_referrer

LIFETIME = timedelta(minutes=10)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create(
    *, service_id: uuid.UUID, user: User, app: ProviderApp, scopes: list[str], return_to: str
) -> tuple[str, ConnectLink]:
    """A new link; returns its URL (shown once) and the stored row."""
    token = secrets.token_urlsafe(32)
    link = ConnectLink.objects.create(
        token_digest=digest(token),
        service_id=service_id,
        user=user,
        provider_app=app,
        scopes=scopes,
        return_to=return_to,
        expires_at=timezone.now() + LIFETIME,
    )
    return settings.BROKER_PUBLIC_URL + reverse("connect-link", args=[token]), link


def _usable(token: str) -> ConnectLink | None:
    return (
        ConnectLink.objects.select_related("provider_app", "service")
        .filter(token_digest=digest(token), used_at=None, expires_at__gt=timezone.now())
        .first()
    )


def consume(link: ConnectLink) -> bool:
    """Marks the link used; True for exactly one caller, however many race."""
    updated = ConnectLink.objects.filter(
        pk=link.pk, used_at=None, expires_at__gt=timezone.now()
    ).update(used_at=timezone.now())
    return updated == 1


@no_referrer
@login_required
@require_http_methods(["GET", "POST"])
def follow(request: AuthenticatedRequest, token: str) -> HttpResponse:
    """GET shows what the link will do; POST (with CSRF token) consumes it and starts consent.

    A GET never consumes, so link previews and prefetchers cannot burn the link.
    """
    link = _usable(token)
    if link is None:
        return render(request, "connect_links/invalid.html", status=404)
    if link.user_id != request.user.pk:
        trail.record(
            "connect_link.denied",
            actor_type=trail.ActorType.USER,
            actor=request.user.username,
            outcome=trail.Outcome.DENIED,
            provider=link.provider_app.slug,
            service=link.service.client_id,
            request=request,
            reason="signed in as another user",
        )
        return render(request, "connect_links/wrong_user.html", status=403)
    if request.method == "GET":
        return render(request, "connect_links/confirm.html", {"link": link})
    if not consume(link):
        return render(request, "connect_links/invalid.html", status=404)
    trail.record(
        "connect_link.used",
        actor_type=trail.ActorType.USER,
        actor=request.user.username,
        subject_user=request.user.username,
        provider=link.provider_app.slug,
        service=link.service.client_id,
        scopes=link.scopes,
        request=request,
    )
    return begin(request, link.provider_app, scopes=link.scopes or None, return_to=link.return_to)
