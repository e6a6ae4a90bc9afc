"""Per-request OAuth 1.0a signatures for services (RFC 5849 section 3).

A service asks for the Authorization header of one exact request (method, URL, body) on a
user's grant and sends that request itself. The consumer key's private key or secret and the
grant's token secret stay in the broker; the header is only good for that request, with a
fresh nonce and timestamp (RFC 5849 3.3). The signature base string (RFC 5849 3.4.1) holds
the query parameters and, for `application/x-www-form-urlencoded` bodies only, the body's
parameters (3.4.1.3.1); JSON and other bodies are not signed.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from authlib.common.urls import extract_params
from django.utils import timezone

from broker.models import Grant, ProviderApp
from broker.providers.oauth1_consumer import consumer_auth

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
DEFAULT_PORTS = {"http": 80, "https": 443}
METHOD = re.compile(r"[A-Z]{1,16}")


class SigningError(Exception):
    """The broker will not sign this request; the message says why (no secrets in it)."""


class NotAnOAuth1Grant(SigningError):
    pass


class GrantNotActive(SigningError):
    pass


class URLNotAllowed(SigningError):
    pass


class InvalidSigningRequest(SigningError):
    pass


Origin = tuple[str, str, int]


def origin_of(url: str) -> Origin | None:
    """(scheme, host, port) of an absolute http(s) URL without user info, else None."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or "@" in parts.netloc:
        return None
    return parts.scheme, parts.hostname, port or DEFAULT_PORTS[parts.scheme]


def allowed_origins(app: ProviderApp) -> set[Origin]:
    """The app's base URL origin and its API origin (the proxy's); an app without a base URL
    (generic kind): its endpoints' origins, but for the user's account page (for people)."""
    urls = [app.base_url, app.endpoint("api") or ""] if app.base_url else []
    urls = urls or [url for name, url in app.endpoint_urls().items() if name != "account"]
    return {origin for origin in map(origin_of, urls) if origin is not None}


def check_url(app: ProviderApp, url: str) -> None:
    """A signature is only ever made for the app's own server: never for another host."""
    origin = origin_of(url)
    if origin is None:
        raise URLNotAllowed("the URL must be an absolute http(s) URL without user info")
    if urlsplit(url).fragment:
        raise URLNotAllowed("the URL must not have a fragment")
    if origin not in allowed_origins(app):
        raise URLNotAllowed(f"the URL is not on provider app {app.slug!r}'s server")


def sign_request(
    grant: Grant,
    *,
    method: str,
    url: str,
    body: str | None = None,
    content_type: str | None = None,
) -> str:
    """The `OAuth ...` Authorization header for exactly this request on this grant.

    With `content_type` None, a body that parses as form data is signed as a form body
    (Authlib's rule); pass the content type the request will be sent with to be explicit.
    """
    app = grant.provider_app
    if app.protocol != "oauth1":
        raise NotAnOAuth1Grant(f"grant {grant.pk} is not an OAuth 1.0a grant")
    if grant.status != Grant.Status.ACTIVE:
        raise GrantNotActive(f"grant {grant.pk} is {grant.status}")
    if grant.access_expires_at is not None and grant.access_expires_at <= timezone.now():
        raise GrantNotActive(f"grant {grant.pk}'s access token has expired; reconnect")
    method = method.upper()
    if not METHOD.fullmatch(method):
        raise InvalidSigningRequest("the method must be an HTTP method name")
    check_url(app, url)
    token, token_secret = grant.unseal("access_token"), grant.unseal("token_secret")
    if not token or not token_secret:
        raise GrantNotActive(f"grant {grant.pk} holds no token")

    headers: dict[str, str] = {}
    if content_type:
        headers["Content-Type"] = content_type
        if FORM_CONTENT_TYPE in content_type and body and extract_params(body) is None:
            # Authlib would silently leave the parameters out of the base string.
            raise InvalidSigningRequest("the body is not valid form data")
    auth = consumer_auth(app, token=token, token_secret=token_secret)
    _uri, signed_headers, _body = auth.prepare(method, url, headers, body or "")
    authorization: str = signed_headers["Authorization"]
    return authorization
