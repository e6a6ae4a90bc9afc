"""OAuth 2.0 authorization code consent (RFC 6749 section 4.1), with PKCE S256 (RFC 7636)
unless the kind's provider rejects it, and the RFC 9207 `iss` check where the app names its
issuer.

`begin_consent` stores a single-use pending authorization and redirects to the provider;
`callback` consumes it, exchanges the code (broker.providers.oauth2_client), reads the account
(broker.providers.account) and stores or updates the user's one grant for that account.
"""

from __future__ import annotations

import hmac
import logging

from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET

from accounts.models import User
from accounts.requests import AuthenticatedRequest
from broker.audit import trail
from broker.consent.grant_store import store_consent
from broker.consent.pending import problem_page, session_digest
from broker.consent.return_urls import safe_return_url
from broker.models import Grant, PendingAuthorization, ProviderApp
from broker.ops.security_headers import no_referrer
from broker.providers.account import Account, AccountLookupError, look_up_account
from broker.providers.oauth2_client import (
    ClientMisconfigured,
    GrantRejected,
    TokenResponse,
    TransientTokenError,
    exchange_code,
)
from broker.refresh.schedule import apply_token_response

logger = logging.getLogger(__name__)

# 48 characters of Authlib's alphabet: about 285 bits, far beyond guessing.
STATE_LENGTH = 48
# RFC 7636 4.1: a verifier of 43 to 128 characters.
CODE_VERIFIER_LENGTH = 64


def redirect_uri_for(app: ProviderApp) -> str:
    return settings.BROKER_PUBLIC_URL + reverse("oauth2-callback", args=[app.slug])


def authorization_url(
    app: ProviderApp, *, state: str, redirect_uri: str, scopes: list[str], code_verifier: str
) -> str:
    """RFC 6749 4.1.1 request, with the S256 challenge (RFC 7636 4.2) when a verifier is
    given and the kind's extra parameters (Atlassian: audience, prompt=consent)."""
    kind = app.catalog_entry
    session = OAuth2Session(
        app.client_id,
        redirect_uri=redirect_uri,
        scope=kind.scope_separator.join(scopes),
        code_challenge_method="S256" if code_verifier else None,
    )
    url, _ = session.create_authorization_url(
        app.endpoint("authorize"),
        state=state,
        code_verifier=code_verifier or None,
        **dict(kind.extra_authorize_params),
    )
    session.close()
    return str(url)


def incremental_scopes(user: User, app: ProviderApp, requested: list[str]) -> list[str]:
    """What to ask the provider for: the requested scopes plus those the user's live grants
    of this app hold already, so that a narrow Connect, Reconnect or connect link never
    shrinks a grant other services rely on (consent is incremental). The account is only
    known at the callback, so a user with several accounts at one app is asked for what
    any of them holds. Scopes the app no longer lists are not asked for again. In the app's
    order."""
    wanted = set(requested)
    for held in (
        Grant.objects.filter(user=user, provider_app=app)
        .exclude(status=Grant.Status.REVOKED)
        .values_list("scopes", flat=True)
    ):
        wanted.update(held)
    return [scope for scope in app.scopes if scope in wanted]


def begin_consent(
    request: HttpRequest,
    app: ProviderApp,
    *,
    scopes: list[str] | None = None,
    return_to: str = "",
) -> HttpResponse:
    """Stores the pending authorization (state, PKCE verifier, scopes, return URL), then
    redirects to the provider's authorization endpoint. `scopes` narrow the app's, but the
    provider is always asked for at least what the user's grant already holds."""
    requested = list(scopes) if scopes else list(app.scopes)
    unknown = sorted(set(requested) - set(app.scopes))
    if unknown:
        return problem_page(
            request,
            "Unknown scopes",
            f"{app.name} cannot be asked for: {', '.join(unknown)}. "
            f"It may be asked for: {', '.join(app.scopes) or 'nothing'}.",
            app=app,
        )
    if not app.endpoint("authorize"):
        return misconfigured_page(request, app, "the app has no authorization endpoint")
    user = request.user
    if not user.is_authenticated:  # both callers require sign-in; never bind to nobody
        raise PermissionDenied
    requested = incremental_scopes(user, app, requested)
    pending = PendingAuthorization(
        state=generate_token(STATE_LENGTH),
        user=user,
        session_digest=session_digest(request),
        provider_app=app,
        scopes=requested,
        return_to=safe_return_url(return_to) or "",
        redirect_uri=redirect_uri_for(app),
    )
    code_verifier = "" if app.catalog_entry.rejects_pkce else generate_token(CODE_VERIFIER_LENGTH)
    if code_verifier:
        pending.seal("code_verifier", code_verifier)
    pending.save()
    url = authorization_url(
        app,
        state=pending.state,
        redirect_uri=pending.redirect_uri,
        scopes=requested,
        code_verifier=code_verifier,
    )
    return HttpResponseRedirect(url)


def misconfigured_page(request: HttpRequest, app: ProviderApp, reason: str) -> HttpResponse:
    trail.record(
        "grant.consent_failed",
        actor_type=trail.ActorType.USER,
        actor=request.user.get_username(),
        outcome=trail.Outcome.FAILURE,
        subject_user=request.user.get_username(),
        provider=app.slug,
        request=request,
        reason="client_misconfigured",
        error=reason,
    )
    logger.error("provider app %s is misconfigured: %s", app.slug, reason)
    return problem_page(
        request,
        f"{app.name} is not set up correctly",
        f"The broker's registration at {app.name} is misconfigured, so connecting cannot "
        "work at the moment. The administrators have been told; there is nothing you need "
        "to do.",
        status=502,
        app=app,
    )


def pending_for(state: str) -> PendingAuthorization | None:
    """The pending authorization `state` names, consumed or not (nothing is written)."""
    if not state:
        return None
    return (
        PendingAuthorization.objects.select_related("provider_app", "user")
        .filter(state=state)
        .first()
    )


def belongs_to(
    pending: PendingAuthorization, request: AuthenticatedRequest, app: ProviderApp
) -> bool:
    """Whether the callback comes from the user and browser session that started this
    consent, at the app it was started for."""
    same_session = hmac.compare_digest(pending.session_digest, session_digest(request))
    return pending.user_id == request.user.pk and same_session and pending.provider_app_id == app.pk


def consume(pending: PendingAuthorization) -> bool:
    """Takes the pending authorization exactly once (RFC 6749 10.12): the conditional update
    succeeds for one request only, and never for an expired one. Called only after
    `belongs_to`, so a stranger holding the state cannot burn the owner's consent."""
    now = timezone.now()
    taken = PendingAuthorization.objects.filter(
        pk=pending.pk, consumed_at=None, expires_at__gt=now
    ).update(consumed_at=now)
    return taken == 1


def failed(
    request: AuthenticatedRequest,
    app: ProviderApp,
    reason: str,
    *,
    outcome: str = trail.Outcome.FAILURE,
    **detail: str,
) -> None:
    trail.record(
        "grant.consent_failed",
        actor_type=trail.ActorType.USER,
        actor=request.user.get_username(),
        outcome=outcome,
        subject_user=request.user.get_username(),
        provider=app.slug,
        request=request,
        reason=reason,
        **detail,
    )


def issuer_problem(app: ProviderApp, iss: str | None) -> str | None:
    """RFC 9207 section 2.4: why the callback's `iss` is unacceptable, or None."""
    if iss is None:
        # Atlassian and many others send no `iss`; an app's issuer only enables the check.
        return None
    expected = app.endpoint("issuer")
    if not expected:
        # The provider says who it is, but nobody told the broker whom to expect, so a
        # mix-up (a response from another authorization server) could not be told apart
        # from a genuine one. Refusing makes the operator configure the issuer.
        return "the provider sent an issuer (iss) but the app has no issuer configured"
    if not hmac.compare_digest(iss.encode(), expected.encode()):
        return "the issuer (iss) in the response is not the app's issuer"
    return None


@no_referrer
@login_required
@require_GET
def callback(request: AuthenticatedRequest, slug: str) -> HttpResponse:
    """RFC 6749 4.1.2: the provider sends the browser back here with `code` and `state`
    (or `error`)."""
    # A disabled app connects nobody, not even a consent that began before it was disabled.
    app = get_object_or_404(ProviderApp, slug=slug, enabled=True)
    pending = pending_for(request.GET.get("state", ""))
    if pending is not None and not belongs_to(pending, request, app):
        # Checked before consuming: the owner's consent stays usable by the owner.
        failed(request, app, "state_not_bound_to_this_session", outcome=trail.Outcome.DENIED)
        return problem_page(
            request,
            "This sign-in cannot be completed",
            "The link back from the provider belongs to another sign-in session. Nothing was "
            "connected. Start again from My connections.",
            app=app,
            may_retry=True,
        )
    if pending is None or not consume(pending):
        failed(request, app, "unknown_or_used_state", outcome=trail.Outcome.DENIED)
        return problem_page(
            request,
            "This sign-in cannot be completed",
            "The link back from the provider is unknown, was already used or has expired "
            "(after 10 minutes). Nothing was connected. Start again from My connections.",
            app=app,
            may_retry=True,
        )
    issuer_error = issuer_problem(app, request.GET.get("iss"))
    if issuer_error:
        failed(request, app, "issuer_mismatch", outcome=trail.Outcome.DENIED)
        return problem_page(
            request,
            "The response did not come from the expected provider",
            f"{issuer_error.capitalize()}. Nothing was connected.",
            app=app,
        )
    error = request.GET.get("error")
    if error:
        return provider_error_page(request, app, error, request.GET.get("error_description", ""))
    code = request.GET.get("code", "")
    if not code:
        failed(request, app, "no_code")
        return problem_page(
            request,
            "The provider sent no authorization code",
            "Nothing was connected. Try again from My connections.",
            app=app,
            may_retry=True,
        )
    try:
        token = exchange_code(
            app,
            code=code,
            redirect_uri=pending.redirect_uri,
            code_verifier=pending.unseal("code_verifier"),
        )
    except ClientMisconfigured as exc:
        return misconfigured_page(request, app, str(exc))
    except TransientTokenError as exc:
        failed(request, app, "provider_unavailable", error=exc.error)
        return provider_unavailable_page(request, app)
    except GrantRejected as exc:
        failed(request, app, "code_rejected", error=exc.error)
        return problem_page(
            request,
            f"{app.name} did not accept the sign-in",
            f"{app.name} refused the authorization code ({exc.error}): it may have been used "
            "already or have expired. Nothing was connected. Start again from My connections.",
            app=app,
            may_retry=True,
        )
    try:
        account = look_up_account(app, token.access_token)
    except AccountLookupError as exc:
        if exc.transient:
            failed(request, app, "provider_unavailable", error=str(exc))
            return provider_unavailable_page(request, app)
        return misconfigured_page(request, app, f"reading the account failed: {exc}")
    grant, reconnected = store_grant(request.user, app, pending, token, account)
    trail.record(
        "grant.reconnected" if reconnected else "grant.connected",
        actor_type=trail.ActorType.USER,
        actor=request.user.get_username(),
        grant_id=grant.id,
        subject_user=request.user.get_username(),
        provider=app.slug,
        scopes=grant.scopes,
        request=request,
        account=account.external_id,
        sites=[site["id"] for site in account.resources],
    )
    who = account.name or account.external_id
    messages.success(
        request, f"{app.name} is {'reconnected' if reconnected else 'connected'} ({who})."
    )
    return redirect(safe_return_url(pending.return_to) or "connections")


def provider_error_page(
    request: AuthenticatedRequest, app: ProviderApp, error: str, description: str
) -> HttpResponse:
    """RFC 6749 4.1.2.1 error responses; `access_denied` is the user pressing Deny."""
    error = error[:64]
    if error == "access_denied":
        failed(request, app, "user_denied", outcome=trail.Outcome.DENIED, error=error)
        return problem_page(
            request,
            "You cancelled",
            f"You did not allow access at {app.name}, so nothing was connected. You can "
            "connect whenever you like from My connections.",
            status=200,
            app=app,
            may_retry=True,
        )
    failed(request, app, "provider_error", error=error, description=description[:200])
    return problem_page(
        request,
        f"{app.name} reported an error",
        f"{app.name} ended the sign-in with the error “{error}”"
        + (f": {description[:200]}" if description else "")
        + ". Nothing was connected.",
        status=502,
        app=app,
        may_retry=True,
    )


def provider_unavailable_page(request: HttpRequest, app: ProviderApp) -> HttpResponse:
    return problem_page(
        request,
        f"{app.name} is not available",
        f"{app.name} did not answer properly. Nothing was connected; please try again in a "
        "few minutes.",
        status=503,
        app=app,
        may_retry=True,
    )


def store_grant(
    user: User,
    app: ProviderApp,
    pending: PendingAuthorization,
    token: TokenResponse,
    account: Account,
) -> tuple[Grant, bool]:
    """Creates the user's grant for this account, or updates the live one in place (same
    id, active again). Returns (grant, reconnected)."""

    def fill(grant: Grant) -> None:
        grant.account_name = account.name
        grant.account_email = account.email
        grant.resources = account.resources
        # What was asked for; the token response's `scope`, when sent, overrides it.
        grant.scopes = pending.scopes
        grant.redirect_uri = pending.redirect_uri  # Data Center's refreshes repeat it
        # A new consent starts a new refresh-token family, with its own absolute lifetime.
        grant.refresh_absolute_expires_at = None
        apply_token_response(grant, token, now=grant.consented_at, refreshed=False)

    return store_consent(user, app, account.external_id, fill)
