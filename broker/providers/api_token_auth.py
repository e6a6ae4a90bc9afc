"""HTTP Basic auth with an Atlassian API token (RFC 7617): the email and the token.

Grants of a kind whose protocol is "api_token" hold the account's email
(`Grant.account_email`) and the API token (sealed as `api_token`). The token is never handed
to a service: the proxy calls `basic_authorization(grant)` for each request it forwards to
the app's API origin, and nothing else reads the token except `look_up_api_token_account`,
which checks a token before it is stored.
"""

from __future__ import annotations

from base64 import b64encode

from django.utils import timezone
from requests.auth import HTTPBasicAuth

from broker.catalog.provider_kinds import KINDS
from broker.models import Grant, ProviderApp
from broker.providers.account import Account, AccountLookupError, get_json_with, identity_from


class ApiTokenUnusable(Exception):
    """The grant cannot authenticate a request: not an API-token grant, not active, or its
    token has expired (the beat then marks it reconnect_required). No secret in the message."""


# The catalog kinds whose grants hold an API token.
API_TOKEN_KINDS = tuple(kind.name for kind in KINDS.values() if kind.protocol == "api_token")


def is_api_token_app(app: ProviderApp) -> bool:
    return app.protocol == "api_token"


def basic_credentials(email: str, api_token: str) -> str:
    """The Authorization header value for Basic auth (RFC 7617 2: UTF-8, base64)."""
    return "Basic " + b64encode(f"{email}:{api_token}".encode()).decode()


def basic_authorization(grant: Grant) -> str:
    """The `Authorization` header the proxy sends upstream for an API-token grant.

    Checked here, at the moment of use, rather than trusting the beat: a token past its
    expiry date, or a grant no longer active, gives ApiTokenUnusable."""
    if not is_api_token_app(grant.provider_app):
        raise ApiTokenUnusable(f"grant {grant.pk} does not hold an API token")
    if grant.status != Grant.Status.ACTIVE:
        raise ApiTokenUnusable(f"grant {grant.pk} is {grant.status}")
    expires_at = grant.refresh_absolute_expires_at
    if expires_at is not None and expires_at <= timezone.now():
        raise ApiTokenUnusable(
            f"the API token of grant {grant.pk} expired on {expires_at:%Y-%m-%d}"
        )
    api_token = grant.unseal("api_token")
    if not api_token or not grant.account_email:
        raise ApiTokenUnusable(f"grant {grant.pk} holds no API token")
    return basic_credentials(grant.account_email, api_token)


def look_up_api_token_account(app: ProviderApp, email: str, api_token: str) -> Account:
    """The account an email and API token authenticate as, read from the app's identity
    endpoint (Atlassian: /rest/api/3/myself); AccountLookupError if refused or unreachable."""
    identity_url = app.endpoint("identity")
    if not identity_url:
        raise AccountLookupError(f"app {app.slug} has no identity endpoint", transient=False)
    return identity_from(app, get_json_with(identity_url, HTTPBasicAuth(email, api_token)))
