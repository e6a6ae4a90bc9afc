"""Storing an Atlassian API token as a grant: its owner on My connections, or an admin.

An API token is not a consent: its owner creates it at id.atlassian.com with an expiry date
at most a year ahead, and gives it to the broker with the account's email. The broker
checks it against the app's identity endpoint (so a mistyped token is refused on the form,
not at a service's first call), then stores it like every secret: sealed, bound to the
grant's row (one grant per user, app and account, as for consents), audited. It is never
refreshed and never handed to a service; the proxy sends it as Basic auth
(broker.providers.api_token_auth). Users and services are warned before it expires
(broker.notify.expiry_warnings), and the grant ends when it does
(broker.refresh.api_token_expiry).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django import forms
from django.http import HttpRequest
from django.utils import timezone

from accounts.models import User
from broker.audit import trail
from broker.consent.grant_store import store_consent
from broker.models import Grant, ProviderApp
from broker.providers.account import AccountLookupError
from broker.providers.api_token_auth import is_api_token_app, look_up_api_token_account

# Atlassian caps an API token's lifetime at one year from its creation.
MAX_LIFETIME = timedelta(days=365)


class ApiTokenRefused(Exception):
    """The provider did not accept the email and token, or could not be asked; the message
    is for the person on the form (no secret in it)."""


def expires_at(expires_on: date) -> datetime:
    """The moment a token with this expiry date stops working: the start of that day, UTC
    (the earliest reading, so that nobody is told too late)."""
    return datetime.combine(expires_on, time.min, tzinfo=UTC)


def expiry_problem(expires_on: date, today: date) -> str | None:
    """Why this expiry date cannot be right for a new Atlassian API token, if it cannot."""
    if expires_on <= today:
        return "The expiry date must be in the future: this token has already expired."
    if expires_on > today + MAX_LIFETIME:
        latest = today + MAX_LIFETIME
        return (
            f"Atlassian API tokens expire within a year: give the date Atlassian showed, "
            f"{latest:%Y-%m-%d} at the latest."
        )
    return None


class ApiTokenForm(forms.Form):
    email = forms.EmailField(
        max_length=255, help_text="The email address of the Atlassian account."
    )
    api_token = forms.CharField(
        label="API token",
        max_length=1000,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="Created at id.atlassian.com under Security, API tokens.",
    )
    expires_on = forms.DateField(
        label="Expires on",
        widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
        help_text="The expiry date Atlassian showed when you created the token.",
    )

    def clean_expires_on(self) -> date:
        expires_on: date = self.cleaned_data["expires_on"]
        problem = expiry_problem(expires_on, timezone.now().astimezone(UTC).date())
        if problem:
            raise forms.ValidationError(problem)
        return expires_on


def store_api_token(
    user: User,
    app: ProviderApp,
    form: ApiTokenForm,
    *,
    actor_type: str,
    actor: str,
    request: HttpRequest | None,
) -> tuple[Grant, bool]:
    """Checks the form's email and token at the provider, then creates the user's grant
    for that account or replaces the token of the live one. Returns (grant, replaced);
    ApiTokenRefused when the provider refused or could not be reached (nothing stored)."""
    if not is_api_token_app(app):
        raise ValueError(f"app {app.slug} does not take API tokens")
    email: str = form.cleaned_data["email"]
    api_token: str = form.cleaned_data["api_token"]
    expires_on: date = form.cleaned_data["expires_on"]
    concerning: dict[str, Any] = {"subject_user": user.get_username(), "provider": app.slug}
    try:
        account = look_up_api_token_account(app, email, api_token)
    except AccountLookupError as exc:
        trail.record(
            "grant.api_token_refused",
            actor_type=actor_type,
            actor=actor,
            outcome=trail.Outcome.DENIED if exc.status in (401, 403) else trail.Outcome.FAILURE,
            request=request,
            error=str(exc),
            **concerning,
        )
        if exc.status in (401, 403):
            raise ApiTokenRefused(
                f"{app.name} did not accept this email and API token: check both, and that "
                "the token has not expired or been revoked."
            ) from None
        raise ApiTokenRefused(
            f"{app.name} could not check the token right now; nothing was stored. Try again "
            "in a few minutes."
        ) from None

    def fill(grant: Grant) -> None:
        grant.status = Grant.Status.ACTIVE
        grant.account_name = account.name
        # The email the token authenticates with (Basic auth), as the owner typed it.
        grant.account_email = email
        grant.scopes = []
        grant.resources = []
        grant.seal("api_token", api_token)
        grant.refresh_absolute_expires_at = expires_at(expires_on)
        # Nothing to refresh: the refresh engine's beat never claims this grant.
        grant.next_refresh_at = None
        grant.access_expires_at = None

    grant, replaced = store_consent(user, app, account.external_id, fill)
    trail.record(
        "grant.api_token_replaced" if replaced else "grant.api_token_stored",
        actor_type=actor_type,
        actor=actor,
        grant_id=grant.pk,
        request=request,
        account=account.external_id,
        expires_on=f"{expires_on:%Y-%m-%d}",
        **concerning,
    )
    return grant, replaced
