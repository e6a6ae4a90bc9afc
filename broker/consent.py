"""Starting a consent, whatever the protocol, and what every consent flow shares.

`begin` is what the Connect button and the service connect links call; it hands over to
the OAuth 2.0 or the OAuth 1.0a flow. Both flows bind their pending authorization to the
signed-in user and to a digest of the session key (`session_digest`), and end failures on
`problem_page`.
"""

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


def begin(
    request: HttpRequest,
    app: ProviderApp,
    *,
    scopes: list[str] | None = None,
    return_to: str = "",
) -> HttpResponse:
    """Sends the signed-in user to `app`'s provider to consent; they come back to the
    callback and then to `return_to` if `broker.return_urls.safe_return_url` accepts it.
    `scopes` may narrow the app's scopes, never widen them (OAuth 2.0 only); the provider
    is still asked for whatever the user's grant already holds (consent is incremental)."""
    if app.protocol == "oauth1":
        # Imported here: the flows import this module (session binding, problem page).
        from broker import oauth1_flow

        response: HttpResponse = oauth1_flow.begin_consent(request, app, return_to=return_to)
        return response
    from broker import oauth2_flow

    return oauth2_flow.begin_consent(request, app, scopes=scopes, return_to=return_to)


# Finished or abandoned consents are kept a day (for support questions), then deleted.
CONSENT_STATE_RETENTION = timedelta(days=1)


@shared_task(ignore_result=True)
def purge_expired_consent_state() -> int:
    """Beat: deletes pending authorizations and connect links that expired over a day ago.
    They hold no usable secret by then (single use, ten minutes), only clutter."""
    cutoff = timezone.now() - CONSENT_STATE_RETENTION
    pending, _ = PendingAuthorization.objects.filter(expires_at__lt=cutoff).delete()
    links, _ = ConnectLink.objects.filter(expires_at__lt=cutoff).delete()
    return pending + links
