"""The OAuth 1.0a consent flow (RFC 5849 section 2), as Jira and Confluence Data Center run it.

1. Temporary credentials (2.1): a signed POST to the request-token endpoint with
   `oauth_callback`; the request token and its sealed secret become a PendingAuthorization
   bound to the user and session (single use, 10 minutes).
2. Resource owner authorization (2.2): the user is sent to the authorize endpoint and comes
   back to `/oauth1/callback/<slug>` with `oauth_token` and `oauth_verifier`.
3. Token credentials (2.3): a signed POST to the access-token endpoint; the identity
   endpoint says which account was connected; the grant is stored or updated.

All signing is Authlib's (broker.providers.oauth1_consumer); all provider HTTP goes through
`provider_request`, within the provider deadline and without secrets in logs or messages.
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import requests
from authlib.common.urls import add_params_to_uri
from django.conf import settings
from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET

from accounts.models import User
from broker.audit import trail
from broker.consent.grant_store import store_consent
from broker.consent.pending import session_digest
from broker.consent.return_urls import safe_return_url
from broker.infra.outbound_http import provider_session
from broker.models import Grant, PendingAuthorization, ProviderApp
from broker.ops.security_headers import no_referrer
from broker.providers.account import Account, AccountLookupError, identity_from
from broker.providers.oauth1_consumer import ConsumerMisconfigured, consumer_auth, public_key_pem

logger = logging.getLogger(__name__)

# Jira sends this verifier when the user presses Deny.
DENIED_VERIFIER = "denied"
OAUTH_PROBLEM = re.compile(r"[a-z_]{1,64}")


# -- talking to the provider -----------------------------------------------------------------


class ProviderError(Exception):
    """A provider call failed. `problem` is Jira's `oauth_problem` code or one of ours."""

    def __init__(self, problem: str, step: str, status: int | None = None) -> None:
        super().__init__(f"{step}: {problem}" + (f" (HTTP {status})" if status else ""))
        self.problem = problem
        self.step = step
        self.status = status


def oauth_problem(response: requests.Response) -> str | None:
    """Jira's error code: `oauth_problem=...` in a form body or the WWW-Authenticate header."""
    fields = dict(parse_qsl(response.text.strip())) if len(response.text) < 4000 else {}
    problem = fields.get("oauth_problem")
    if problem is None:
        found = re.search(r'oauth_problem="([^"]*)"', response.headers.get("WWW-Authenticate", ""))
        problem = found.group(1) if found else None
    # Only a plain code is kept: it ends up on a page and in the audit log.
    return problem if problem and OAUTH_PROBLEM.fullmatch(problem) else None


def provider_request(
    method: str, url: str, auth: requests.auth.AuthBase, *, step: str
) -> requests.Response:
    """The one way this flow calls a provider: signed, within BROKER_PROVIDER_TIMEOUT in
    total, errors as codes."""
    # Form posts to Data Center need this header to pass its XSRF check.
    headers = {"X-Atlassian-Token": "no-check", "Accept": "application/json"}
    host = urlsplit(url).netloc
    try:
        with provider_session() as session:
            response = session.request(
                method, url, auth=auth, headers=headers, allow_redirects=False
            )
    except requests.Timeout:
        logger.warning("oauth1 %s at %s timed out", step, host)
        raise ProviderError("timeout", step) from None
    except requests.RequestException as exc:
        logger.warning("oauth1 %s at %s failed: %s", step, host, type(exc).__name__)
        raise ProviderError("network_error", step) from None
    if response.status_code >= 300:
        problem = oauth_problem(response) or f"http_{response.status_code}"
        logger.warning("oauth1 %s at %s: HTTP %s %s", step, host, response.status_code, problem)
        raise ProviderError(problem, step, response.status_code)
    return response


def credentials_from(response: requests.Response, step: str) -> dict[str, str]:
    """RFC 5849 2.1 / 2.3: a form-encoded body with `oauth_token` and `oauth_token_secret`."""
    fields = dict(parse_qsl(response.text.strip()))
    if not fields.get("oauth_token") or not fields.get("oauth_token_secret"):
        raise ProviderError("malformed_response", step, response.status_code)
    return fields


def callback_url(app: ProviderApp) -> str:
    return settings.BROKER_PUBLIC_URL + reverse("oauth1-callback", args=[app.slug])


# -- binding the consent to its user and session ---------------------------------------------


# -- failure pages ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    status: int
    title: str
    message: str
    # Shown with the app's consumer key, public key and callback URL.
    admin_fix: str = ""


LINK = "the application link in {provider}"
FAILURES: dict[str, Failure] = {
    "user_denied": Failure(
        400,
        "You declined access",
        "{provider} did not grant access because you declined. Nothing was stored. You can "
        "connect again from My connections whenever you like.",
    ),
    "signature_method_rejected": Failure(
        502,
        "{provider} rejected the broker's signature method",
        "The connection cannot be made until an administrator fixes the application link.",
        "The application link must use incoming authentication with RSA-SHA1, this consumer "
        "key and this public key.",
    ),
    "consumer_key_unknown": Failure(
        502,
        "{provider} does not know this broker",
        "The connection cannot be made until an administrator sets up the application link.",
        "Create an application link with incoming authentication for this consumer key, with "
        "this public key (RSA-SHA1) and this callback URL.",
    ),
    "signature_invalid": Failure(
        502,
        "{provider} could not verify the broker's signature",
        "The connection cannot be made until an administrator fixes the application link.",
        "The public key in the application link must match the broker's private key for this "
        "app: paste this public key into the link's incoming authentication (or, for "
        "HMAC-SHA1, make the consumer secrets match).",
    ),
    "timestamp_refused": Failure(
        502,
        "{provider} refused the request's timestamp",
        "The clocks of the broker and the provider disagree.",
        "Synchronise the clocks (NTP) of the broker hosts and the provider.",
    ),
    "callback_not_confirmed": Failure(
        502,
        "{provider} did not confirm the callback",
        "The connection cannot be made until an administrator checks the provider.",
        "The request-token endpoint must speak OAuth 1.0a (oauth_callback_confirmed=true); "
        "check the app's endpoints.",
    ),
    "token_rejected": Failure(
        400,
        "This authorization is no longer valid",
        "{provider} no longer accepts this authorization request (it expired or was used). "
        "Nothing was stored. Start again from My connections.",
    ),
    "token_expired": Failure(
        400,
        "This authorization expired",
        "The authorization took too long. Nothing was stored. Start again from My connections.",
    ),
    "permission_denied": Failure(
        400,
        "{provider} refused access",
        "{provider} did not allow this account to grant access. Nothing was stored. Ask an "
        "administrator if you think you should have access.",
    ),
    "unknown_request": Failure(
        400,
        "This sign-in could not be completed",
        "The broker has no pending connection for this link in your session: it was already "
        "used, it expired, or it was started by someone else or in another browser. Nothing "
        "was stored. Start again from My connections.",
    ),
    "missing_parameters": Failure(
        400,
        "This sign-in could not be completed",
        "The provider's answer lacks the token or the verifier. Nothing was stored. Start "
        "again from My connections.",
    ),
    "timeout": Failure(
        502,
        "{provider} did not answer in time",
        "Nothing was stored. Try again in a few minutes.",
        "Check that the broker can reach the provider's base URL and that it is healthy.",
    ),
    "network_error": Failure(
        502,
        "The broker could not reach {provider}",
        "Nothing was stored. Try again in a few minutes.",
        "Check the app's base URL, DNS, firewalls and TLS between the broker and the provider.",
    ),
    "consumer_misconfigured": Failure(
        502,
        "This provider app is not fully configured",
        "The connection cannot be made until an administrator completes the provider app.",
        "The provider app needs a consumer key and, for RSA-SHA1, an RSA private key (for "
        "HMAC-SHA1, a consumer secret): see `manage.py loadproviders`.",
    ),
    "identity_unavailable": Failure(
        502,
        "The broker could not read your account at {provider}",
        "Access was granted but the account could not be identified, so nothing was stored.",
        "Check the app's identity endpoint (Jira: /rest/api/2/myself).",
    ),
}
GENERIC_FAILURE = Failure(
    502,
    "{provider} answered with an error",
    "Nothing was stored. Try again later; if it keeps failing, tell an administrator.",
    "The provider answered the broker's request with an unexpected error (code below).",
)


def failure_page(
    request: HttpRequest,
    app: ProviderApp,
    problem: str,
    *,
    step: str,
    outcome: str = trail.Outcome.FAILURE,
) -> HttpResponse:
    """Ends a consent on a page that says what went wrong and who must fix it; audits it."""
    failure = FAILURES.get(problem, GENERIC_FAILURE)
    user = request.user if request.user.is_authenticated else None
    trail.record(
        "grant.consent_failed",
        actor_type=trail.ActorType.USER,
        actor=user.get_username() if user else "",
        subject_user=user.get_username() if user else "",
        outcome=outcome,
        provider=app.slug,
        request=request,
        problem=problem,
        step=step,
    )
    provider = app.name
    public_key = None
    if failure.admin_fix:
        try:
            public_key = public_key_pem(app)
        except ConsumerMisconfigured:
            public_key = None
    context: dict[str, Any] = {
        "app": app,
        "title": failure.title.format(provider=provider),
        "message": failure.message.format(provider=provider),
        "admin_fix": failure.admin_fix.format(provider=provider),
        "problem": problem,
        "consumer_key": app.client_id,
        "signature_method": app.signature_method or "RSA-SHA1",
        "public_key": public_key,
        "callback_url": callback_url(app),
    }
    return render(request, "oauth1/failed.html", context, status=failure.status)


# -- step 1: temporary credentials, then off to the provider ---------------------------------


def begin_consent(request: HttpRequest, app: ProviderApp, *, return_to: str) -> HttpResponse:
    """Gets a request token (RFC 5849 2.1) and redirects the signed-in user to authorize it."""
    if not request.user.is_authenticated:
        raise PermissionError("begin_consent needs a signed-in user")
    if app.protocol != "oauth1" or not app.enabled:
        raise Http404("no such OAuth 1.0a app")
    if return_to and not safe_return_url(return_to):
        logger.warning("oauth1 consent for %s: return_to not allowed, ignored", app.slug)
        return_to = ""
    callback = callback_url(app)
    try:
        auth = consumer_auth(app, callback=callback)
        endpoint = app.endpoint("request_token") or ""
        temporary = credentials_from(
            provider_request("POST", endpoint, auth, step="request_token"), "request_token"
        )
    except ConsumerMisconfigured as exc:
        logger.error("oauth1 consent for %s: %s", app.slug, exc)
        return failure_page(request, app, "consumer_misconfigured", step="request_token")
    except ProviderError as exc:
        return failure_page(request, app, exc.problem, step=exc.step)
    # RFC 5849 2.1: a 1.0a provider confirms that it will use our callback.
    if temporary.get("oauth_callback_confirmed") != "true":
        return failure_page(request, app, "callback_not_confirmed", step="request_token")

    pending = PendingAuthorization(
        state=secrets.token_urlsafe(32),
        user=request.user,
        session_digest=session_digest(request),
        provider_app=app,
        scopes=list(app.scopes),
        return_to=return_to,
        redirect_uri=callback,
        request_token=temporary["oauth_token"],
    )
    pending.seal("request_token_secret", temporary["oauth_token_secret"])
    pending.save()
    authorize = app.endpoint("authorize") or ""
    location = add_params_to_uri(authorize, [("oauth_token", pending.request_token)])
    return HttpResponseRedirect(location)


# -- step 3: token credentials, identity, grant ----------------------------------------------


def fetch_identity(app: ProviderApp, token: str, token_secret: str) -> Account:
    endpoint = app.endpoint("identity")
    if not endpoint:
        raise ProviderError("identity_unavailable", "identity")
    auth = consumer_auth(app, token=token, token_secret=token_secret)
    response = provider_request("GET", endpoint, auth, step="identity")
    try:
        return identity_from(app, response.json())
    except (ValueError, AccountLookupError):
        raise ProviderError("identity_unavailable", "identity", response.status_code) from None


def expiry_from(credentials: dict[str, str]) -> Any:
    """Jira's `oauth_expires_in` (seconds; five years by default), when sent."""
    try:
        seconds = int(credentials.get("oauth_expires_in", ""))
    except ValueError:
        return None
    return timezone.now() + timedelta(seconds=seconds) if seconds > 0 else None


def store_grant(
    user: User, app: ProviderApp, identity: Account, credentials: dict[str, str]
) -> tuple[Grant, bool]:
    """Creates, or updates in place, the one live grant per (user, app, account).

    Returns the grant and whether it already existed (a reconnect).
    """

    def fill(grant: Grant) -> None:
        grant.account_name = identity.name
        grant.account_email = identity.email
        grant.scopes = list(app.scopes)
        grant.status = Grant.Status.ACTIVE
        grant.seal("access_token", credentials["oauth_token"])
        grant.seal("token_secret", credentials["oauth_token_secret"])
        grant.seal("refresh_token", None)
        grant.access_expires_at = expiry_from(credentials)
        grant.token_version += 1
        # OAuth 1.0a tokens are not refreshed; they last until they expire or are revoked.
        grant.next_refresh_at = None
        grant.refresh_enqueued_at = None

    return store_consent(user, app, identity.external_id, fill)


def complete_consent(request: HttpRequest, app: ProviderApp) -> HttpResponse:
    token = request.GET.get("oauth_token", "")
    verifier = request.GET.get("oauth_verifier", "")
    if not token or not verifier:
        return failure_page(request, app, "missing_parameters", step="callback")
    if not request.user.is_authenticated:
        return failure_page(
            request, app, "unknown_request", step="callback", outcome=trail.Outcome.DENIED
        )
    user = request.user
    now = timezone.now()
    pending = PendingAuthorization.objects.filter(
        request_token=token,
        provider_app=app,
        user=user,
        session_digest=session_digest(request),
        consumed_at=None,
        expires_at__gt=now,
    ).first()
    # Single use across all processes: only the request that flips consumed_at goes on.
    claimed = (
        pending is not None
        and PendingAuthorization.objects.filter(pk=pending.pk, consumed_at=None).update(
            consumed_at=now
        )
        == 1
    )
    if pending is None or not claimed:
        return failure_page(
            request, app, "unknown_request", step="callback", outcome=trail.Outcome.DENIED
        )
    if verifier == DENIED_VERIFIER:
        return failure_page(
            request, app, "user_denied", step="authorize", outcome=trail.Outcome.DENIED
        )

    try:
        auth = consumer_auth(
            app,
            token=pending.request_token,
            token_secret=pending.unseal("request_token_secret"),
            verifier=verifier,
        )
        endpoint = app.endpoint("access_token") or ""
        credentials = credentials_from(
            provider_request("POST", endpoint, auth, step="access_token"), "access_token"
        )
        identity = fetch_identity(
            app, credentials["oauth_token"], credentials["oauth_token_secret"]
        )
    except ConsumerMisconfigured as exc:
        logger.error("oauth1 consent for %s: %s", app.slug, exc)
        return failure_page(request, app, "consumer_misconfigured", step="access_token")
    except ProviderError as exc:
        return failure_page(request, app, exc.problem, step=exc.step)

    grant, reconnected = store_grant(user, app, identity, credentials)
    trail.record(
        "grant.reconnected" if reconnected else "grant.connected",
        actor_type=trail.ActorType.USER,
        actor=user.get_username(),
        subject_user=user.get_username(),
        grant_id=grant.pk,
        provider=app.slug,
        request=request,
        account=identity.external_id,
    )
    # The same confirmation as an OAuth 2.0 consent (broker.consent.oauth2_flow) shows.
    who = identity.name or identity.external_id
    messages.success(
        request, f"{app.name} is {'reconnected' if reconnected else 'connected'} ({who})."
    )
    return HttpResponseRedirect(safe_return_url(pending.return_to) or reverse("connections"))


# -- views -----------------------------------------------------------------------------------


def oauth1_app_or_404(slug: str) -> ProviderApp:
    app = get_object_or_404(ProviderApp, slug=slug, enabled=True)
    if app.protocol != "oauth1":
        raise Http404("not an OAuth 1.0a app")
    return app


@no_referrer
@require_GET
def callback(request: HttpRequest, slug: str) -> HttpResponse:
    """RFC 5849 2.2: the provider sends the user back with `oauth_token` and `oauth_verifier`."""
    return complete_consent(request, oauth1_app_or_404(slug))
