"""BrokerClient: a service's connection to the broker's internal API (`/api/v1/`).

The service authenticates at `POST /api/v1/oauth/token` (RFC 6749 4.4 client credentials,
with `client_secret_basic` or RFC 7523 `private_key_jwt`) and keeps the short-lived broker
token until shortly before it expires. Provider tokens are cached per grant (or user and
provider) and scopes, for as long as they outlast the caller's `min_ttl`. One client is
meant to be shared by all threads of a process.
"""

from __future__ import annotations

import json
import threading
import time
from base64 import b64encode, urlsafe_b64decode
from collections.abc import Collection
from dataclasses import dataclass, replace
from hashlib import sha256
from typing import TYPE_CHECKING, Any, TypedDict
from urllib.parse import parse_qsl, quote_plus, urlsplit

import requests

from broker_client import __version__
from broker_client.assertions import ASSERTION_TYPE, AssertionSigner
from broker_client.errors import BrokerError, BrokerUnreachable, error_for
from broker_client.proxy_session import ProxySession, naming_headers
from broker_client.requests_auth import RequestsBearerAuth, RequestsOAuth1Auth
from broker_client.results import ConnectLink, ExchangedToken, Grant, ProviderToken

if TYPE_CHECKING:
    from broker_client.httpx_auth import HttpxBearerAuth

DEFAULT_TIMEOUT = 10.0
DEFAULT_MIN_TTL = 60  # seconds, as the broker's own default
TOKEN_PATH = "/api/v1/oauth/token"
# A broker token is renewed this long before it expires, so that no call carries a token
# that dies on the way.
BROKER_TOKEN_MARGIN = 30.0

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
EXCHANGE_KEY = "exchange"  # first item of an exchanged token's cache key (grant ids are UUIDs)

CacheKey = tuple[str, str, str, tuple[str, ...] | None]


class Subject(TypedDict, total=False):
    """The grant a call is about, as the API names it: its id, or a user and a provider."""

    grant: str
    user: str
    provider: str


def subject(user: str | None, grant: str | None, provider: str | None) -> Subject:
    """`grant=`, or `user=` and `provider=` (never both)."""
    if grant is not None and user is None and provider is None:
        return {"grant": grant}
    if grant is None and user is not None and provider is not None:
        return {"user": user, "provider": provider}
    raise ValueError("give grant=, or user= and provider=")


@dataclass(frozen=True)
class _BrokerToken:
    value: str
    renew_at: float  # time.monotonic()


@dataclass(frozen=True)
class _Cached:
    token: ProviderToken | ExchangedToken
    expires_at: float  # time.monotonic()

    def handed_out(self, min_ttl: int) -> ProviderToken | ExchangedToken | None:
        """The token with its remaining lifetime, if it still lasts `min_ttl` seconds."""
        remaining = self.expires_at - time.monotonic()
        if remaining < min_ttl:
            return None
        return replace(self.token, expires_in=int(remaining))


@dataclass(frozen=True)
class BearerTokenSource:
    """The provider token an auth object sends for one grant, and its replacement after the
    provider refused it (shared by the requests and httpx auths)."""

    client: BrokerClient
    target: Subject
    min_ttl: int
    scopes: tuple[str, ...] | None

    def token(self) -> str:
        return self.client.access_token(
            **self.target, min_ttl=self.min_ttl, scopes=self.scopes
        ).access_token

    def renewed(self, refused: str) -> str:
        """After the provider answered 401 to the token `refused`: a token from a forced
        refresh, unless another caller already replaced `refused` in the cache (so that a
        burst of 401s for one token costs one refresh, not one each)."""
        current = self.token()
        if current != refused:
            return current
        return self.client.access_token(
            **self.target, min_ttl=self.min_ttl, scopes=self.scopes, force_refresh=True
        ).access_token


class BrokerClient:
    """Talks to the broker as one service client.

    `base_url` is the broker's public URL (BROKER_PUBLIC_URL): `private_key_jwt` assertions
    name its token endpoint as their audience. Give `client_secret`, or `private_key` (PEM
    of an RSA, EC P-256 or Ed25519 key registered with `createserviceclient --public-key`)
    and optionally its `kid` (computed from the key when omitted). `session` lets the
    caller configure TLS or proxies; `timeout` (seconds) applies to every call to the broker.
    """

    def __init__(
        self,
        base_url: str,
        client_id: str,
        *,
        client_secret: str | None = None,
        private_key: str | bytes | None = None,
        kid: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        session: requests.Session | None = None,
    ) -> None:
        if (client_secret is None) == (private_key is None):
            raise ValueError("give client_secret or private_key (exactly one)")
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self.timeout = timeout
        self._secret = client_secret
        self._signer = (
            AssertionSigner(private_key, kid, client_id, self.base_url + TOKEN_PATH)
            if private_key is not None
            else None
        )
        self._session = session or requests.Session()
        self._owns_session = session is None
        self._broker_token: _BrokerToken | None = None
        # Held while authenticating, so that concurrent threads authenticate once.
        self._auth_lock = threading.Lock()
        self._tokens: dict[CacheKey, _Cached] = {}
        self._tokens_lock = threading.Lock()

    def close(self) -> None:
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> BrokerClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- the API --------------------------------------------------------------------------

    def grants(
        self,
        *,
        user: str | None = None,
        provider: str | None = None,
        status: str | None = None,
    ) -> list[Grant]:
        """The grants this service may see (never their tokens), oldest first; filtered by
        the broker username, the provider app slug and the status when given. Every page:
        the broker answers at most 1,000 at a time and names the next page in `next`."""
        params = {"user": user, "provider": provider, "status": status}
        query: dict[str, str] = {k: v for k, v in params.items() if v}
        grants: list[Grant] = []
        while True:
            body = self._call("GET", "/api/v1/grants", params=query)
            grants += [Grant.from_json(grant) for grant in body["grants"]]
            if not body.get("next"):
                return grants
            # Only the next page's query: the path stays relative to this client's base URL.
            query = dict(parse_qsl(urlsplit(body["next"]).query))

    def access_token(
        self,
        *,
        user: str | None = None,
        grant: str | None = None,
        provider: str | None = None,
        min_ttl: int = DEFAULT_MIN_TTL,
        force_refresh: bool = False,
        scopes: Collection[str] | None = None,
    ) -> ProviderToken:
        """A provider access token of a user's OAuth 2.0 grant that stays valid at least
        `min_ttl` seconds (the broker caps it below the provider's token lifetime).

        A cached token is returned while it lasts `min_ttl`; otherwise the broker is asked
        (and refreshes the grant if it must). `force_refresh=True` skips the cache and gets
        a token from a refresh that completed after the call: use it when the provider
        refused the token with a 401. `scopes` are those the caller needs: the broker
        checks that the service's rules and the grant hold them (`InsufficientScope`
        otherwise); the token's own scopes are in `ProviderToken.scopes`.
        """
        body: dict[str, Any] = {**subject(user, grant, provider), "min_ttl": min_ttl}
        wanted = tuple(sorted(scopes)) if scopes is not None else None
        key: CacheKey = (grant or "", user or "", provider or "", wanted)
        if not force_refresh:
            with self._tokens_lock:
                cached = self._tokens.get(key)
            handed_out = cached.handed_out(min_ttl) if cached else None
            if isinstance(handed_out, ProviderToken):
                return handed_out
        if force_refresh:
            body["force_refresh"] = True
        if wanted is not None:
            body["scopes"] = list(wanted)
        asked_at = time.monotonic()
        token = ProviderToken.from_json(self._call("POST", "/api/v1/access-token", body))
        with self._tokens_lock:
            self._forget_expired()
            # A token of unknown lifetime is not kept: only the broker knows when it dies.
            if token.expires_in is not None:
                self._tokens[key] = _Cached(token, asked_at + token.expires_in)
        return token

    def exchange(
        self,
        subject_token: str,
        provider: str,
        *,
        scope: Collection[str] | None = None,
        subject_token_type: str = ID_TOKEN_TYPE,
        min_ttl: int = DEFAULT_MIN_TTL,
    ) -> ExchangedToken:
        """The provider access token of the user `subject_token` names, for acting on their
        behalf (RFC 8693 token exchange at `/api/v1/oauth/token`).

        `subject_token` is the signed-in user's token from the company IdP (an ID token by
        default; give `subject_token_type` for a JWT access token), whose `aud` must be one
        the broker registered for this service. `provider` is the app's slug; `scope` the
        scopes the caller needs (the rules and the grant must hold them). The answer is
        cached per user token, provider and scope while it lasts `min_ttl` seconds.
        Refusals: `InvalidRequest` (`invalid_request`: a bad or expired user token),
        `InvalidTarget` (an app this service may not use for the user, or no grant),
        `ApiTokenGrant` (the grant holds an API token: use the proxy)."""
        wanted = tuple(sorted(scope)) if scope is not None else None
        # The user's token is a secret: the cache holds its digest only.
        key: CacheKey = (EXCHANGE_KEY, sha256(subject_token.encode()).hexdigest(), provider, wanted)
        with self._tokens_lock:
            cached = self._tokens.get(key)
        handed_out = cached.handed_out(min_ttl) if cached else None
        if isinstance(handed_out, ExchangedToken):
            return handed_out
        form = {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": subject_token,
            "subject_token_type": subject_token_type,
            "audience": provider,
        }
        if wanted is not None:
            form["scope"] = " ".join(wanted)
        asked_at = time.monotonic()
        token = ExchangedToken.from_json(self._token_request(form))
        # Kept no longer than the user's token is valid: once the user's sign-in is over,
        # the next call asks the broker, which checks it again.
        lifetimes = [token.expires_in, _seconds_left(subject_token)]
        kept = min((seconds for seconds in lifetimes if seconds is not None), default=None)
        with self._tokens_lock:
            self._forget_expired()
            if kept is not None:
                self._tokens[key] = _Cached(token, asked_at + kept)
        return token

    def sign(
        self,
        method: str,
        url: str,
        body: str | None = None,
        *,
        user: str | None = None,
        grant: str | None = None,
        provider: str | None = None,
        content_type: str | None = None,
    ) -> str:
        """The `Authorization: OAuth ...` header value for exactly one request on a user's
        OAuth 1.0a grant (Jira / Confluence Data Center), valid for that request only.

        `url` is the full URL with its query string; `body` the form-encoded body, if the
        request sends one (RFC 5849 3.4.1.3: only form bodies are signed)."""
        payload: dict[str, Any] = {**subject(user, grant, provider), "method": method, "url": url}
        if body is not None:
            payload["body"] = body
        if content_type is not None:
            payload["content_type"] = content_type
        authorization: str = self._call("POST", "/api/v1/sign", payload)["authorization"]
        return authorization

    def connect_link(
        self,
        user: str,
        provider: str,
        return_to: str,
        scopes: Collection[str] | None = None,
    ) -> ConnectLink:
        """A single-use, expiring URL that sends `user` through consent at `provider`, then
        to `return_to` (whose origin the broker must allow-list)."""
        payload: dict[str, Any] = {"user": user, "provider": provider, "return_to": return_to}
        if scopes is not None:
            payload["scopes"] = sorted(scopes)
        return ConnectLink.from_json(self._call("POST", "/api/v1/connect-links", payload))

    def requests_auth(
        self,
        *,
        user: str | None = None,
        grant: str | None = None,
        provider: str | None = None,
        min_ttl: int = DEFAULT_MIN_TTL,
        scopes: Collection[str] | None = None,
    ) -> RequestsBearerAuth:
        """An auth for `requests` that sends the user's provider token as a Bearer token,
        and on a 401 from the provider gets a token from a forced refresh and retries once."""
        return RequestsBearerAuth(self._token_source(user, grant, provider, min_ttl, scopes))

    def requests_oauth1_auth(
        self, *, user: str | None = None, grant: str | None = None, provider: str | None = None
    ) -> RequestsOAuth1Auth:
        """An auth for `requests` that has the broker sign each request (OAuth 1.0a)."""
        return RequestsOAuth1Auth(self, subject(user, grant, provider))

    def httpx_auth(
        self,
        *,
        user: str | None = None,
        grant: str | None = None,
        provider: str | None = None,
        min_ttl: int = DEFAULT_MIN_TTL,
        scopes: Collection[str] | None = None,
    ) -> HttpxBearerAuth:
        """Like `requests_auth`, for `httpx.Client` and `httpx.AsyncClient` (needs httpx:
        `pip install "oauth-broker-client[httpx]"`)."""
        # Imported here, not above: httpx is an optional extra.
        try:
            from broker_client.httpx_auth import HttpxBearerAuth
        except ImportError as exc:
            raise ImportError(
                'httpx_auth needs httpx: pip install "oauth-broker-client[httpx]"'
            ) from exc

        return HttpxBearerAuth(self._token_source(user, grant, provider, min_ttl, scopes))

    def proxy_session(
        self,
        *,
        provider: str,
        user: str | None = None,
        grant: str | None = None,
        subject_token: str | None = None,
    ) -> ProxySession:
        """A `requests.Session` whose relative URLs go through the broker's proxy to
        `provider`'s API, as `user` (or `grant`, or the user whose IdP token is
        `subject_token`): `session.get("ex/jira/<cloud id>/rest/api/3/myself")`. The
        provider token never reaches this process; the broker refreshes and retries on an
        expired one. The broker's refusals raise BrokerError subclasses."""
        return ProxySession(self, provider, naming_headers(user, grant, subject_token))

    def _token_source(
        self,
        user: str | None,
        grant: str | None,
        provider: str | None,
        min_ttl: int,
        scopes: Collection[str] | None,
    ) -> BearerTokenSource:
        return BearerTokenSource(
            self,
            subject(user, grant, provider),
            min_ttl,
            tuple(scopes) if scopes is not None else None,
        )

    # --- plumbing ----------------------------------------------------------------------

    def _forget_expired(self) -> None:
        """Drops cached tokens that have expired (called with the cache lock held)."""
        now = time.monotonic()
        for key in [k for k, cached in self._tokens.items() if cached.expires_at <= now]:
            del self._tokens[key]

    def _call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> dict[str, Any]:
        """An API call with the broker token; on a 401, authenticates again and retries
        once (the token may have been retired: secret rotated out, key removed)."""
        token = self._current_broker_token()
        response = self._send(method, path, _bearer(token), json=body, **kwargs)
        if response.status_code == 401:
            response.close()
            self._drop_broker_token(token)
            token = self._current_broker_token()
            response = self._send(method, path, _bearer(token), json=body, **kwargs)
        return _json(response)

    def _current_broker_token(self) -> str:
        with self._auth_lock:
            token = self._broker_token
            if token is None or time.monotonic() >= token.renew_at:
                token = self._broker_token = self._authenticate()
            return token.value

    def _drop_broker_token(self, refused: str) -> None:
        with self._auth_lock:
            if self._broker_token is not None and self._broker_token.value == refused:
                self._broker_token = None

    def _token_request(self, form: dict[str, str]) -> dict[str, Any]:
        """A request to the token endpoint with this service's client authentication
        (RFC 6749 2.3.1 client_secret_basic, or RFC 7523 private_key_jwt)."""
        headers: dict[str, str] = {}
        if self._signer is not None:
            form = {
                **form,
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": self._signer.assertion(),
            }
        else:
            # RFC 6749 2.3.1: id and secret are form-urlencoded before Basic encoding.
            pair = f"{quote_plus(self.client_id)}:{quote_plus(self._secret or '')}"
            headers["Authorization"] = "Basic " + b64encode(pair.encode()).decode()
        return _json(self._send("POST", TOKEN_PATH, headers, data=form))

    def _authenticate(self) -> _BrokerToken:
        """RFC 6749 4.4 client credentials."""
        asked_at = time.monotonic()
        body = self._token_request({"grant_type": "client_credentials"})
        expires_in = float(body["expires_in"])
        margin = min(BROKER_TOKEN_MARGIN, expires_in / 2)
        return _BrokerToken(body["access_token"], asked_at + expires_in - margin)

    def _send(
        self, method: str, path: str, headers: dict[str, str], **kwargs: Any
    ) -> requests.Response:
        headers = {"User-Agent": f"oauth-broker-client/{__version__}", **headers}
        try:
            return self._session.request(
                method, self.base_url + path, headers=headers, timeout=self.timeout, **kwargs
            )
        except requests.RequestException as exc:
            raise BrokerUnreachable("broker_unreachable", str(exc)) from exc


def _seconds_left(jwt_token: str) -> float | None:
    """Seconds until the JWT's `exp`, read without checking it (the broker checks it; this
    only bounds a cache), or None when it has none or is not a JWT."""
    try:
        claims = json.loads(urlsafe_b64decode(jwt_token.split(".")[1] + "=="))
        return float(claims["exp"]) - time.time()
    except (IndexError, ValueError, KeyError, TypeError):
        return None


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _json(response: requests.Response) -> dict[str, Any]:
    """The JSON object of a successful answer; otherwise the typed error."""
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if not response.ok:
        raise error_for(response.status_code, payload, response.headers.get("Retry-After"))
    if not isinstance(payload, dict):
        raise BrokerError(
            "unexpected_response", "the answer is not a JSON object", status=response.status_code
        )
    return payload
