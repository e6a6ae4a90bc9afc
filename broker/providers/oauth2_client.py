"""Calls to a provider's OAuth 2.0 token endpoint: code exchange and refresh.

The one place the broker talks to token endpoints. Authlib builds the requests and parses
the responses; this module adds what differs by kind (how the parameters travel: JSON body
for Atlassian Cloud, query string for Data Center, form elsewhere) and sorts every failure
into one of three kinds the callers act on (RFC 6749 section 5.2 error responses):

- GrantRejected: the provider refused this grant (invalid_grant, unauthorized_client, other
  OAuth errors): the user must consent again.
- ClientMisconfigured: the provider refused the broker itself (invalid_client, a wrong
  secret, which Atlassian reports as access_denied, or a non-OAuth 4xx such as a wrong
  URL): admins must fix the app; users must not be sent back through consent for it.
- TransientTokenError: timeouts, connection errors, 5xx, 429: retry later, with backoff,
  honouring Retry-After.

Messages carry the provider's error code and description only, never a token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode

import requests
from authlib.common.urls import url_decode
from authlib.integrations.requests_client import OAuth2Session
from django.utils import timezone
from requests.auth import AuthBase

from broker.catalog.provider_kinds import TokenEncoding
from broker.infra.outbound_http import provider_session
from broker.models import ProviderApp

# Codes that say the grant (not the client) is bad; anything else from a 4xx JSON error
# that is not a client error below is treated the same way.
CLIENT_ERRORS = {"invalid_client", "access_denied", "unsupported_grant_type"}
TRANSIENT_ERRORS = {"temporarily_unavailable", "server_error", "slow_down"}
MAX_DESCRIPTION = 200


class TokenEndpointError(Exception):
    def __init__(self, error: str, description: str = "", *, status: int | None = None) -> None:
        self.error = error
        self.description = description[:MAX_DESCRIPTION]
        self.status = status
        super().__init__(f"{error}: {self.description}" if self.description else error)


class GrantRejected(TokenEndpointError):
    """The provider says this grant is dead (e.g. invalid_grant): the user must reconnect."""


class ClientMisconfigured(TokenEndpointError):
    """The provider rejected the broker's client (id, secret, URL): an admin must act."""


class TransientTokenError(TokenEndpointError):
    """Worth retrying later; `retry_after` is the provider's hint in seconds, if any."""

    def __init__(
        self,
        error: str,
        description: str = "",
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(error, description, status=status)
        self.retry_after = retry_after


@dataclass(frozen=True)
class TokenResponse:
    access_token: str
    refresh_token: str | None  # None: the provider sent none; keep the stored one
    expires_in: int | None
    scopes: list[str] | None  # None: the provider did not say
    token_type: str

    def __repr__(self) -> str:  # never print tokens, even in a debugger or traceback
        return f"TokenResponse(expires_in={self.expires_in}, scopes={self.scopes})"


class ParametersAsTheKindWants(AuthBase):
    """Authenticates with client_id and client_secret among the parameters (as Atlassian
    requires), and moves the parameters Authlib prepared into a JSON body, the query string
    (Data Center) or a form body."""

    def __init__(self, encoding: TokenEncoding, client_id: str, client_secret: str) -> None:
        self.encoding = encoding
        self.client_id = client_id
        self.client_secret = client_secret

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        body = request.body.decode() if isinstance(request.body, bytes) else request.body or ""
        params = dict(url_decode(body))
        params["client_id"] = self.client_id
        if self.client_secret:
            params["client_secret"] = self.client_secret
        if self.encoding == "json":
            encoded: bytes | None = json.dumps(params).encode()
            request.headers["Content-Type"] = "application/json"
        elif self.encoding == "query":
            request.prepare_url(request.url, params)
            encoded = None
            request.headers.pop("Content-Type", None)
        else:
            encoded = urlencode(params).encode()
            request.headers["Content-Type"] = "application/x-www-form-urlencoded"
        request.body = encoded
        request.headers["Content-Length"] = str(len(encoded or b""))
        return request


def retry_after_seconds(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - timezone.now()).total_seconds())
    except (TypeError, ValueError):
        return None


def classify(response: requests.Response) -> requests.Response:
    """Authlib compliance hook: turns every unsuccessful response into our error kinds."""
    status = response.status_code
    if status >= 500 or status == 429:
        raise TransientTokenError(
            f"http_{status}", status=status, retry_after=retry_after_seconds(response)
        )
    try:
        document = response.json()
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise ClientMisconfigured(
            f"http_{status}", "the token endpoint did not answer with JSON", status=status
        )
    if "error" in document or status >= 400:
        error = str(document.get("error") or f"http_{status}")
        description = str(document.get("error_description") or "")
        if error in TRANSIENT_ERRORS:
            raise TransientTokenError(
                error, description, status=status, retry_after=retry_after_seconds(response)
            )
        if error in CLIENT_ERRORS or (status == 401 and error != "invalid_grant"):
            raise ClientMisconfigured(error, description, status=status)
        raise GrantRejected(error, description, status=status)
    if not isinstance(document.get("access_token"), str) or not document["access_token"]:
        raise ClientMisconfigured("invalid_response", "no access_token in the token response")
    return response


def session_for(app: ProviderApp) -> OAuth2Session:
    session = OAuth2Session(app.client_id)
    session.register_compliance_hook("access_token_response", classify)
    session.register_compliance_hook("refresh_token_response", classify)
    return session


def post_to_token_endpoint(app: ProviderApp, grant_type: str, **params: Any) -> TokenResponse:
    token_url = app.endpoint("token")
    if not token_url:
        raise ClientMisconfigured("no_token_endpoint", f"app {app.slug} has no token endpoint")
    auth = ParametersAsTheKindWants(
        app.catalog_entry.token_encoding, app.client_id, app.unseal("client_secret") or ""
    )
    # Never followed: the request carries the client secret, which goes where it was
    # configured to go or nowhere.
    params["allow_redirects"] = False
    try:
        with provider_session(session_for(app)) as session:
            if grant_type == "refresh_token":
                token = session.refresh_token(token_url, auth=auth, **params)
            else:
                token = session.fetch_token(token_url, grant_type=grant_type, auth=auth, **params)
    except requests.Timeout:
        raise TransientTokenError("timeout", "the token endpoint did not answer in time") from None
    except requests.RequestException as exc:
        raise TransientTokenError("network", type(exc).__name__) from None
    return parse_token(token, app, str(params.get("refresh_token", "")))


def seconds(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def parse_token(
    token: dict[str, Any], app: ProviderApp, sent_refresh_token: str = ""
) -> TokenResponse:
    scope = token.get("scope")
    # Authlib copies the refresh token it sent into a response that had none; undo that so
    # "the provider sent none" stays visible (the caller then keeps the stored one).
    refresh_token = token.get("refresh_token") or None
    if refresh_token == sent_refresh_token:
        refresh_token = None
    return TokenResponse(
        access_token=token["access_token"],
        refresh_token=refresh_token,
        expires_in=seconds(token.get("expires_in")),
        scopes=scope.split(app.catalog_entry.scope_separator) if isinstance(scope, str) else None,
        token_type=str(token.get("token_type") or "Bearer"),
    )


def exchange_code(
    app: ProviderApp, *, code: str, redirect_uri: str, code_verifier: str | None = None
) -> TokenResponse:
    """RFC 6749 4.1.3 (with RFC 7636 4.5 when a PKCE verifier was made)."""
    params: dict[str, Any] = {"code": code, "redirect_uri": redirect_uri}
    if code_verifier:
        params["code_verifier"] = code_verifier
    return post_to_token_endpoint(app, "authorization_code", **params)


def refresh(
    app: ProviderApp,
    *,
    refresh_token: str,
    redirect_uri: str,
) -> TokenResponse:
    """RFC 6749 section 6, for the grant's scopes. Data Center also wants the redirect_uri
    of the original code."""
    params: dict[str, Any] = {"refresh_token": refresh_token}
    if app.catalog_entry.refresh_sends_redirect_uri:
        params["redirect_uri"] = redirect_uri
    return post_to_token_endpoint(app, "refresh_token", **params)
