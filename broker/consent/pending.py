"""What every consent flow shares: the binding of a pending authorization to the browser
session (`session_digest`), the page a failed consent ends on (`problem_page`), and the
purge of expired consent state."""

from __future__ import annotations

from datetime import timedelta

from celery import shared_task
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.crypto import salted_hmac

from broker.models import ConnectLink, PendingAuthorization, ProviderApp

SESSION_DIGEST_SALT = "broker.consent.session-binding"


def session_digest(request: HttpRequest) -> str:
    """HMAC-SHA256 of the session key: binds a pending consent to this browser session
    without storing the key itself (a database reader must not be able to ride the session).
    The session is created if it has none yet; its key is never rotated here."""
    if request.session.session_key is None:
        request.session.save()
    key = request.session.session_key or ""
    return salted_hmac(SESSION_DIGEST_SALT, key, algorithm="sha256").hexdigest()


def problem_page(
    request: HttpRequest,
    title: str,
    message: str,
    *,
    status: int = 400,
    app: ProviderApp | None = None,
    may_retry: bool = False,
) -> HttpResponse:
    """The page a consent ends on when it cannot finish. `may_retry` offers Connect again
    (only when retrying can help: not for a misconfigured app)."""
    context = {"title": title, "message": message, "app": app, "may_retry": may_retry}
    return render(request, "consent/problem.html", context, status=status)


# Finished or abandoned consents are kept a day (for support questions), then deleted.
CONSENT_STATE_RETENTION = timedelta(days=1)


@shared_task(name="broker.consent.purge_expired_consent_state", ignore_result=True)
def purge_expired_consent_state() -> int:
    """Beat: deletes pending authorizations and connect links that expired over a day ago.
    They hold no usable secret by then (single use, ten minutes), only clutter."""
    cutoff = timezone.now() - CONSENT_STATE_RETENTION
    pending, _ = PendingAuthorization.objects.filter(expires_at__lt=cutoff).delete()
    links, _ = ConnectLink.objects.filter(expires_at__lt=cutoff).delete()
    return pending + links
