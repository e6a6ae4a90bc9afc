"""Single sign-on with the company's OpenID Connect provider, on Authlib's Django client.

Authlib does the protocol: discovery, the authorization request with `state`, `nonce` and
PKCE S256 (kept in the session), the code exchange, and the ID token's checks (signature
by the JWKS, `iss`, `aud`, `exp`, `iat`, `nonce`, `at_hash`). The JWKS is cached by
broker.infra.key_sets, like subject tokens' (an unknown `kid` fetches it again at most once
per BROKER_JWKS_REFETCH_SECONDS, so the IdP can roll its keys). This module adds what
Authlib leaves to the application: the discovery document must name the configured issuer
(OIDC Discovery 4.3), ID tokens are accepted only with asymmetric algorithms (never `none`,
never HS256, which would let anyone holding the public key sign), an ID token is required,
and the callback's `iss` must match where the IdP sends one (RFC 9207). The ID token and the
IdP's documents are read by the bounded parser (broker.infra.bounded_json) first.
"""

from __future__ import annotations

import functools
from typing import Any

import requests
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.django_client import OAuth
from authlib.integrations.django_client.apps import DjangoOAuth2App
from authlib.integrations.requests_client import OAuth2Session
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, KeySetSerialization

from broker.infra import key_sets
from broker.infra.bounded_json import unverified_jwt
from broker.infra.outbound_http import provider_session

# JWS algorithms accepted for ID tokens (RFC 7518 3.1): public-key signatures only.
ASYMMETRIC_ALGORITHMS = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
]  # fmt: skip
CALLBACK_PATH = "/accounts/oidc/callback"


class SignInRefused(Exception):
    """Single sign-on cannot complete; `title` and `message` are shown to the person."""

    def __init__(self, title: str, message: str) -> None:
        super().__init__(message)
        self.title = title
        self.message = message


def enabled() -> bool:
    return bool(settings.BROKER_OIDC_ISSUER)


def redirect_uri() -> str:
    return f"{settings.BROKER_PUBLIC_URL}{CALLBACK_PATH}"


class _IdPSession(OAuth2Session):
    """Authlib's session for one exchange with the IdP (discovery, the code exchange, the
    JWKS), through the broker's one outbound HTTP client: the whole exchange ends within
    BROKER_PROVIDER_TIMEOUT. Authlib closes it when the exchange is over."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        provider_session(self)


class _IdPClient(DjangoOAuth2App):
    client_cls = _IdPSession

    def fetch_jwk_set(self, force: bool = False) -> KeySetSerialization:
        """The IdP's keys from the broker's one key-set cache; Authlib asks with `force`
        when the ID token's `kid` is not among the keys it was given."""
        kid = key_sets.UNKNOWN_KID if force else None
        try:
            keys = key_sets.key_set(settings.BROKER_OIDC_ISSUER, kid, self._fetched_keys)
        except key_sets.KeySetUnavailable as exc:
            raise unreachable(str(exc)) from None
        return keys.as_dict(private=False)

    def _fetched_keys(self) -> KeySet:
        try:
            return KeySet.import_key_set(super().fetch_jwk_set(force=True))
        except (requests.RequestException, ValueError, KeyError, RuntimeError, JoseError) as exc:
            raise key_sets.KeySetUnavailable(type(exc).__name__) from None

    def parse_id_token(self, token: dict[str, Any], nonce: str, **kwargs: Any) -> Any:
        """Authlib's checks, on an ID token the bounded parser read first: one nested too
        deeply or too large is refused (a ValueError) before joserfc parses it again."""
        if isinstance(token.get("id_token"), str):
            unverified_jwt(token["id_token"])
        return super().parse_id_token(token, nonce, **kwargs)


class _OAuth(OAuth):
    oauth2_client_cls = _IdPClient


@functools.cache
def _client(issuer: str, client_id: str, client_secret: str, scopes: str) -> DjangoOAuth2App:
    """One client per configuration, so discovery and the JWKS are fetched once."""
    client: DjangoOAuth2App = _OAuth().register(
        "oidc",
        client_id=client_id,
        client_secret=client_secret,
        server_metadata_url=f"{issuer.rstrip('/')}/.well-known/openid-configuration",
        client_kwargs={"scope": scopes, "code_challenge_method": "S256"},
    )
    return client


def unreachable(exc: Exception | str) -> SignInRefused:
    """The page for an IdP that did not answer; `exc` is the failure or its name."""
    reason = exc if isinstance(exc, str) else type(exc).__name__
    return SignInRefused(
        "Single sign-on is unavailable",
        "The broker could not reach the sign-in service. Try again in a moment; if it "
        f"persists, tell your administrator ({reason}).",
    )


def client() -> DjangoOAuth2App:
    """The configured client with its discovery document loaded and checked."""
    oidc = _client(
        settings.BROKER_OIDC_ISSUER,
        settings.BROKER_OIDC_CLIENT_ID,
        settings.BROKER_OIDC_CLIENT_SECRET,
        settings.BROKER_OIDC_SCOPES,
    )
    try:
        metadata = oidc.load_server_metadata()
    except (requests.RequestException, ValueError) as exc:
        raise unreachable(exc) from exc
    if metadata.get("issuer") != settings.BROKER_OIDC_ISSUER:
        oidc.server_metadata.clear()  # fetched again at the next attempt
        raise SignInRefused(
            "Single sign-on is misconfigured",
            "The sign-in service's discovery document names another issuer than "
            "BROKER_OIDC_ISSUER; tell your administrator.",
        )
    # Authlib verifies with the algorithms the IdP lists: keep only public-key ones.
    listed = metadata.get("id_token_signing_alg_values_supported") or ["RS256"]
    metadata["id_token_signing_alg_values_supported"] = [
        alg for alg in listed if alg in ASYMMETRIC_ALGORITHMS
    ] or ["RS256"]
    return oidc


def authorize_redirect(request: HttpRequest) -> HttpResponse:
    """Sends the browser to the IdP; state, nonce and the PKCE verifier stay in the session."""
    oidc = client()
    try:
        response: HttpResponse = oidc.authorize_redirect(request, redirect_uri())
    except (requests.RequestException, AuthlibBaseError) as exc:
        raise unreachable(exc) from exc
    return response


def verified_claims(request: HttpRequest) -> dict[str, Any]:
    """The callback's ID token claims, every check passed. Raises SignInRefused."""
    oidc = client()
    issuer = oidc.server_metadata["issuer"]
    sent_issuer = request.GET.get("iss")
    if sent_issuer is not None and sent_issuer != issuer:
        raise SignInRefused(
            "Sign-in refused",
            "The answer came from another sign-in service than the one configured (RFC 9207 "
            "issuer mismatch). Nothing was changed; start again from the sign-in page.",
        )
    if sent_issuer is None and oidc.server_metadata.get(
        "authorization_response_iss_parameter_supported"
    ):
        raise SignInRefused(
            "Sign-in refused",
            "The answer did not say which sign-in service sent it although that service "
            "always does (RFC 9207). Start again from the sign-in page.",
        )
    if request.GET.get("error"):
        raise SignInRefused(
            "Sign-in was not completed",
            "The sign-in service did not sign you in "
            f"({request.GET.get('error_description') or request.GET['error']}).",
        )
    try:
        token = oidc.authorize_access_token(request)
    except requests.RequestException as exc:
        raise unreachable(exc) from exc
    except (AuthlibBaseError, JoseError, ValueError, KeyError, TypeError) as exc:
        raise SignInRefused(
            "Sign-in refused",
            "The sign-in answer could not be verified (expired, replayed, or not meant for "
            f"this broker: {type(exc).__name__}). Nothing was changed; start again from the "
            "sign-in page.",
        ) from exc
    claims = token.get("userinfo")
    if not claims or not isinstance(token.get("id_token"), str):
        raise SignInRefused(
            "Sign-in refused",
            "The sign-in service answered without an ID token; check that its client is set "
            "up for OpenID Connect with the `openid` scope.",
        )
    return dict(claims)


def logout_url() -> str | None:
    """RP-initiated logout at the IdP (OIDC RP-Initiated Logout 1.0 section 2), if it has
    one: `client_id` and `post_logout_redirect_uri`, no `id_token_hint`, since the broker
    keeps no ID token (a database reader must find none, and any service holding one could
    present it). Without the hint the IdP may ask the person to confirm."""
    try:
        oidc = client()
    except SignInRefused:
        return None
    if not oidc.server_metadata.get("end_session_endpoint"):
        return None
    url: str = oidc.create_logout_url(
        post_logout_redirect_uri=f"{settings.BROKER_PUBLIC_URL}{settings.LOGIN_URL}",
        client_id=settings.BROKER_OIDC_CLIENT_ID,
    )["url"]
    return url
