"""The proxy: `/api/v1/proxy/<app-slug>/<path>` calls the provider for a service, and the
user's token never leaves the broker (DESIGN.md "Proxy").

The service authenticates with its broker token and names the grant with `Broker-Grant:
<id>` or `Broker-User: <username>`, or proves the user with `Broker-Subject-Token` (the
user's token from the company IdP, as in token exchange; required by on-behalf-of rules).
The request goes to the app's API origin (its `api` endpoint) and nowhere else: the path
is checked and encoded again by broker.catalog.proxy_paths, the query string is appended, and
redirects are returned, never followed. The service's own `Authorization`, cookies,
`Broker-*` and hop-by-hop headers are dropped; the grant's credentials are put in
(`credentials_for`). The answer's status, headers (but hop-by-hop ones and cookies) and
body come back unchanged, the body streamed (decoded: `Content-Encoding` is removed, so
that the answer can be checked, and so is `Content-Length` when there was one).

Never forwarded: TRACE, TRACK and CONNECT (405 `method_not_allowed`, whatever the rules
say: an echo of the request would carry the user's credential back, a tunnel would go past
every rule), the method-override headers (`X-HTTP-Method-Override`, `X-HTTP-Method`,
`X-Method-Override`: dropped, so the rules judge the method the provider runs), and a
`_method` query or form parameter (refused: it cannot be dropped without changing the
request). An answer that carries the credential the broker put in (broker.api.credential_echo)
is never relayed: 502 `credential_echoed` when it is found in the headers or the body's
first 64 KiB, the relay cut off where it is found later; audited either way.

An upstream 401 to an OAuth 2.0 token is classified: Atlassian's "scope does not match"
(a missing scope, which a refresh cannot fix) is answered 403 `insufficient_scope`; any
other 401 means an expired or revoked token, so the grant is refreshed once (the refresh
engine's forced single flight: concurrent calls share one refresh) and the request sent
once more, its body replayed from the buffer. A 403 is passed through: a permission the
user lacks at the provider.

The broker's own refusals are JSON errors carrying `Broker-Error: <code>`, so a caller can
tell them from the provider's answers. Every call is audited (`proxy.called`: method,
path without the query string, upstream status, duration, bytes, service, user acted
for); every refusal as `proxy.denied`.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import requests
from django.conf import settings
from django.http import HttpRequest, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.response import HTTPResponse as Urllib3Response

from broker.api import credential_echo, grant_lookup, rules, subject_tokens
from broker.api.auth import ServiceRequest
from broker.api.decorators import ANY_METHOD, api_view
from broker.api.errors import ApiError, invalid_request, not_visible
from broker.api.refusals import REFRESH_REFUSALS, refresh_refusal, require_live
from broker.audit import trail
from broker.catalog import proxy_paths
from broker.infra.lookup_text import matchable
from broker.infra.outbound_http import provider_session
from broker.models import Grant, ProviderApp
from broker.providers import api_token_auth, oauth1_signing
from broker.refresh import on_demand
from broker.refresh.doubt_marks import stored_token_in_doubt

log = logging.getLogger(__name__)

GRANT_HEADER = "HTTP_BROKER_GRANT"
USER_HEADER = "HTTP_BROKER_USER"
# RFC 9110 7.6.1: meant for one connection, never forwarded (nor any header `Connection`
# names).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# The service's credentials and cookies for the broker, what the broker's own front proxy
# added, and what the HTTP client computes itself.
NOT_FORWARDED = HOP_BY_HOP | {
    "authorization",
    "cookie",
    "host",
    "content-length",
    "expect",
    "forwarded",
    "x-real-ip",
    # Read by some servers and front proxies (IIS, Symfony, nginx auth set-ups) as the path
    # to serve: a path the rules never judged.
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    # Java stacks (Jersey, Spring) and Atlassian honour these, running another method than
    # the one the rules judged.
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    # The broker's HTTP client asks for the encodings it can decode, so that the answer can
    # be checked for the credential (broker.api.credential_echo).
    "accept-encoding",
}
# The broker's own headers, and what a front proxy says about the request (X-Forwarded-For,
# -Host, -Proto, -Prefix: Spring builds paths and links from the last).
NOT_FORWARDED_PREFIXES = ("broker-", "x-forwarded-")
# The Allow header of the 405 for a method never forwarded (proxy_paths.NEVER_FORWARDED_METHODS).
FORWARDED_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
# A query or form parameter some frameworks read as the method to run (Jersey, Spring,
# Rails); the rules judged the request's own.
METHOD_OVERRIDE_PARAMETER = "_method"
# Cookies the provider sets belong to the broker's connection, not to the service.
NOT_RETURNED = HOP_BY_HOP | {"set-cookie", "set-cookie2"}
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
# Content codings the HTTP client decodes (so that the body can be checked).
DECODABLE = frozenset(Urllib3Response.CONTENT_DECODERS)
# Atlassian's answer to a token without the scope an endpoint needs (PROVIDERS.md).
SCOPE_FAILURE_CATEGORY = "FAILURE_CLIENT_SCOPE_CHECK"
SCOPE_MISMATCH_MESSAGE = "scope does not match"
# A 401's body is read to classify it; more than this is not an error message.
ERROR_BODY_LIMIT = 64 * 1024
CHUNK_BYTES = 64 * 1024
# The start of a body is read and checked before the status is sent: a credential there is
# answered 502; further on, the relay is cut.
CHECKED_BEFORE_STATUS_BYTES = 64 * 1024
# A stored token is used for a call when it lasts this long; otherwise it is refreshed first.
FRESH_FOR_SECONDS = 10


@dataclass(frozen=True)
class Target:
    grant: Grant
    permission: rules.Permission
    # The issuer of the subject token the call was made with (on the user's behalf), or "".
    subject_issuer: str


# --- which grant --------------------------------------------------------------------


def _target(request: ServiceRequest, slug: str, where: dict[str, Any]) -> Target:
    """The grant the headers name, if this service may see it (404 exactly as for a grant
    that does not exist otherwise)."""
    grant_id = request.META.get(GRANT_HEADER, "")
    username = request.META.get(USER_HEADER, "")
    subject_token = request.META.get(subject_tokens.HEADER, "")
    if (grant_id and username) or not (grant_id or username or subject_token):
        raise ApiError(
            400,
            "invalid_request",
            "name the grant with one header: Broker-Grant or Broker-User "
            "(or prove the user with Broker-Subject-Token)",
            **where,
        )
    service_id = request.broker_token.service_id
    if not matchable(slug, grant_id, username):
        raise not_visible(**where)
    subject = (
        subject_tokens.subject_for_service(
            service_id, subject_token, named="Broker-Subject-Token", **where
        )
        if subject_token
        else None
    )
    if grant_id:
        grant = grant_lookup.grant_by_id(grant_id, slug)
    else:
        named_user = username or (subject.user.username if subject else "")
        grant = grant_lookup.users_grant(named_user, slug)
    if grant is None or (subject is not None and grant.user_id != subject.user.pk):
        raise not_visible(**where, grant_id=grant_id or None, subject_user=username)
    concerning = {**where, "grant_id": grant.pk, "subject_user": grant.user.username}
    permission = rules.permission(service_id, grant.provider_app, grant.user)
    if permission is None:
        raise not_visible(**concerning)
    if subject is None and permission.on_behalf_of_only:
        raise ApiError(
            403,
            "on_behalf_of_required",
            f"this service may use {grant.user.username}'s {slug!r} grant only on the user's "
            "behalf: send the user's token in Broker-Subject-Token",
            **concerning,
        )
    return Target(grant, permission, subject.issuer if subject else "")


# --- credentials ----------------------------------------------------------------------


def _fresh(grant: Grant, where: dict[str, Any]) -> Grant:
    """An OAuth 2.0 grant whose stored token lasts the call (refreshed first if not).

    As for the access-token endpoint, a token whose refresh is in flight, cut short or
    rescued may be retired upstream: the engine waits for, applies or redoes that refresh."""
    if grant.provider_app.protocol != "oauth2" or (
        grant.access_token_valid_for(FRESH_FOR_SECONDS) and not stored_token_in_doubt(grant)
    ):
        return grant
    try:
        return on_demand.ensure_fresh(grant.pk, min_ttl=FRESH_FOR_SECONDS)
    except REFRESH_REFUSALS as exc:
        raise refresh_refusal(grant, exc, **where) from None


def _renewed(grant: Grant, where: dict[str, Any]) -> Grant:
    """After the provider refused `grant`'s token: the token of a refresh that completed
    since (another call's, if one did; otherwise a forced one, single flight)."""
    try:
        return on_demand.ensure_fresh(
            grant.pk, min_ttl=0, force_refresh=True, refused_version=grant.token_version
        )
    except REFRESH_REFUSALS as exc:
        raise refresh_refusal(grant, exc, **where) from None


class CredentialsUnusable(Exception):
    """The grant cannot authenticate a request now (not active, expired, holds no token):
    the user must connect again. No secret in the message."""


def credentials_for(
    grant: Grant, *, method: str, url: str, body: bytes, content_type: str
) -> dict[str, str]:
    """The headers that make this exact request the grant's user's, by the grant's kind:
    a Bearer token (OAuth 2.0), a fresh OAuth 1.0a signature (RFC 5849 3: its own nonce and
    timestamp, the query and a form body in the base string), or Basic auth with the
    user's API token (RFC 7617)."""
    if grant.provider_app.protocol == "api_token":
        try:
            return {"Authorization": api_token_auth.basic_authorization(grant)}
        except api_token_auth.ApiTokenUnusable as exc:
            raise CredentialsUnusable(str(exc)) from None
    if grant.provider_app.protocol == "oauth1":
        signed_body = None
        if FORM_CONTENT_TYPE in content_type and body:
            try:
                signed_body = body.decode("utf-8")
            except UnicodeDecodeError:
                raise oauth1_signing.InvalidSigningRequest("the form body is not UTF-8") from None
        header = oauth1_signing.sign_request(
            grant, method=method, url=url, body=signed_body, content_type=content_type or None
        )
        return {"Authorization": header}
    token = grant.unseal("access_token")
    if not token:
        raise CredentialsUnusable(f"grant {grant.pk} holds no token")
    return {"Authorization": f"Bearer {token}"}


# --- the request ------------------------------------------------------------------------


def _request_body(request: HttpRequest, where: dict[str, Any]) -> bytes:
    """The whole body, buffered (so that it can be sent again after a refresh), up to
    BROKER_PROXY_MAX_REQUEST_BYTES."""
    limit = settings.BROKER_PROXY_MAX_REQUEST_BYTES
    if request.META.get("HTTP_TRANSFER_ENCODING"):
        raise ApiError(411, "length_required", "send the body with a Content-Length", **where)
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise invalid_request("Content-Length is not a number") from None
    if length > limit:
        raise ApiError(413, "request_too_large", f"the body is larger than {limit} bytes", **where)
    return request.read(length) if length > 0 else b""


def _upstream_url(
    app: ProviderApp, path: str, segments: list[str], query: str, where: dict[str, Any]
) -> str:
    api = app.endpoint("api")
    if not api:
        raise ApiError(
            400,
            "invalid_request",
            f"provider app {app.slug!r} has no API origin for the proxy (endpoints.api)",
            **where,
        )
    base = api.rstrip("/")
    if any(ord(char) < 0x21 or char in "#\\" for char in query):
        raise ApiError(
            400,
            "invalid_path",
            "the query string holds a character the proxy does not forward",
            **where,
        )
    trailing = "/" if path.endswith("/") and segments else ""
    url = (
        base + proxy_paths.encoded(segments).rstrip("/") + trailing + (f"?{query}" if query else "")
    )
    # Belt and braces: whatever the path held, the URL is on the API origin, under its path.
    if oauth1_signing.origin_of(url) != oauth1_signing.origin_of(base) or not urlsplit(
        url
    ).path.startswith(urlsplit(base).path):
        raise ApiError(400, "invalid_path", "the path leaves the provider's API", **where)
    return url


def _forwarded_headers(request: HttpRequest, app: ProviderApp, method: str) -> dict[str, str]:
    named_by_connection = {
        name.strip().lower() for name in request.META.get("HTTP_CONNECTION", "").split(",")
    }
    headers: dict[str, str] = {}
    for key, value in request.META.items():
        if not key.startswith("HTTP_"):
            continue
        name = key[5:].replace("_", "-").lower()
        if (
            name in NOT_FORWARDED
            or name in named_by_connection
            or name.startswith(NOT_FORWARDED_PREFIXES)
        ):
            continue
        headers[name.title()] = value
    if request.META.get("CONTENT_TYPE"):
        headers["Content-Type"] = request.META["CONTENT_TYPE"]
    if method not in SAFE_METHODS:
        headers.update(app.catalog_entry.proxy_write_headers)
    return headers


def _refuse_method_override(request: HttpRequest, body: bytes, where: dict[str, Any]) -> None:
    """A `_method` in the query or a form body would make some servers run another method
    than the one the rules judged; it cannot be dropped without changing the request."""
    sources = [request.META.get("QUERY_STRING", "")]
    if FORM_CONTENT_TYPE in request.META.get("CONTENT_TYPE", "") and body:
        sources.append(body.decode("latin-1"))
    for source in sources:
        names = (name for name, _ in parse_qsl(source, keep_blank_values=True))
        if any(name.strip().lower() == METHOD_OVERRIDE_PARAMETER for name in names):
            raise ApiError(
                400,
                "invalid_request",
                f"the proxy does not forward a {METHOD_OVERRIDE_PARAMETER!r} parameter: some "
                "servers read it as the method to run; send that method instead",
                **where,
            )


# --- the answer -------------------------------------------------------------------------


class UpstreamResponse(StreamingHttpResponse):
    """The provider's answer, relayed (the broker's own refusals are JSON errors)."""


def _content_codings(upstream: requests.Response) -> list[str]:
    codings = upstream.headers.get("Content-Encoding", "").lower().split(",")
    return [coding.strip() for coding in codings if coding.strip() not in ("", "identity")]


def _returned_headers(upstream: requests.Response) -> dict[str, str]:
    named_by_connection = {
        name.strip().lower() for name in upstream.headers.get("Connection", "").split(",")
    }
    # The body is relayed decoded: its encoding and encoded length no longer apply.
    decoded = {"content-encoding", "content-length"} if _content_codings(upstream) else set()
    return {
        name: value
        for name, value in upstream.headers.items()
        if name.lower() not in NOT_RETURNED
        and name.lower() not in named_by_connection
        and name.lower() not in decoded
    }


def _read_error_body(upstream: requests.Response) -> bytes:
    """A 401's body, decoded, to classify it; it is then returned without its encoding."""
    try:
        data: bytes = upstream.raw.read(ERROR_BODY_LIMIT, decode_content=True)
    except (Urllib3Error, OSError):
        data = b""
    upstream.close()
    return data


def is_scope_mismatch(upstream: requests.Response, body: bytes) -> bool:
    """Atlassian's 401 for a token without the scope the endpoint needs (PROVIDERS.md)."""
    if upstream.headers.get("X-Failure-Category", "") == SCOPE_FAILURE_CATEGORY:
        return True
    return SCOPE_MISMATCH_MESSAGE in body.decode("utf-8", "replace").lower()


class _Relay:
    """The upstream body, decoded, checked for the credential (credential_echo.BodyCheck)
    and streamed to the service up to BROKER_PROXY_MAX_RESPONSE_BYTES; closing it (the WSGI
    server does, also when the service hangs up) ends the provider call and writes the
    audit event."""

    def __init__(
        self,
        upstream: requests.Response,
        resources: ExitStack,
        call: _Call,
        check: credential_echo.BodyCheck,
    ) -> None:
        self.upstream = upstream
        self.resources = resources
        self.call = call
        self.check = check
        self.source = self._checked()
        self.ahead: list[bytes] = []  # checked before the status was sent, not yet relayed
        self.cut_off = False  # the provider hung up, or the deadline passed, while reading ahead
        self.sent = 0
        self.complete = False
        self.echoed = False
        self.closed = False

    def _checked(self) -> Iterator[bytes]:
        for chunk in self.upstream.raw.stream(CHUNK_BYTES, decode_content=True):
            if passed := self.check.passed(chunk):
                yield passed
        if rest := self.check.rest():
            yield rest

    def read_ahead(self) -> None:
        """Reads and checks the start of the body, before the status is sent.
        Raises CredentialEchoed."""
        ahead = 0
        try:
            while ahead < CHECKED_BEFORE_STATUS_BYTES:
                piece = next(self.source, None)
                if piece is None:
                    return
                self.ahead.append(piece)
                ahead += len(piece)
        except (Urllib3Error, OSError) as exc:
            self.cut_off = True
            log.warning("proxied response cut off (%s): %s", self.call.path, type(exc).__name__)

    def __iter__(self) -> Iterator[bytes]:
        limit = settings.BROKER_PROXY_MAX_RESPONSE_BYTES
        ahead, self.ahead = self.ahead, []
        try:
            for piece in itertools.chain(ahead, () if self.cut_off else self.source):
                if self.sent + len(piece) > limit:
                    log.warning("proxied response cut at %d bytes (%s)", limit, self.call.path)
                    return
                self.sent += len(piece)
                yield piece
            self.complete = not self.cut_off
        except credential_echo.CredentialEchoed:
            self.echoed = True
            log.warning("proxied response cut: it holds the credential (%s)", self.call.path)
        except (Urllib3Error, OSError) as exc:  # the provider hung up, or the deadline passed
            log.warning("proxied response cut off (%s): %s", self.call.path, type(exc).__name__)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.upstream.close()
            self.resources.close()
        finally:
            extra = {"credential_echoed": True} if self.echoed else {}
            self.call.audit(self.upstream.status_code, self.sent, self.complete, **extra)


@dataclass
class _Call:
    request: ServiceRequest
    target: Target
    method: str
    path: str
    started: float
    refreshed: bool = False

    def audit(self, status: int, sent: int, complete: bool, **extra: Any) -> None:
        grant = self.target.grant
        on_behalf: dict[str, Any] = (
            {"on_behalf_of": True, "subject_issuer": self.target.subject_issuer}
            if self.target.subject_issuer
            else {}
        )
        trail.service_event(
            "proxy.called",
            self.request.broker_token.client_id,
            grant_id=grant.pk,
            subject_user=grant.user.username,
            provider=grant.provider_app.slug,
            request=self.request,
            method=self.method,
            path=self.path,
            status=status,
            duration_ms=round((time.monotonic() - self.started) * 1000),
            bytes=sent,
            complete=complete,
            refreshed=self.refreshed,
            **on_behalf,
            **extra,
        )


def _send(
    session: requests.Session,
    grant: Grant,
    *,
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes,
    where: dict[str, Any],
) -> tuple[requests.Response, str]:
    """The provider's answer, and the `Authorization` value sent with the request."""
    try:
        credentials = credentials_for(
            grant, method=method, url=url, body=body, content_type=headers.get("Content-Type", "")
        )
    except (CredentialsUnusable, oauth1_signing.GrantNotActive) as exc:
        raise ApiError(409, "reconnect_required", str(exc), **where) from None
    except oauth1_signing.SigningError as exc:
        raise ApiError(400, "invalid_request", str(exc), **where) from None
    try:
        upstream = session.request(
            method,
            url,
            headers={**headers, **credentials},
            data=body or None,
            allow_redirects=False,
            stream=True,
        )
    except requests.Timeout:
        raise ApiError(
            504, "upstream_timeout", "the provider did not answer in time", **where
        ) from None
    except requests.RequestException as exc:
        raise ApiError(
            502,
            "upstream_unreachable",
            f"the provider cannot be reached ({type(exc).__name__})",
            **where,
        ) from None
    return upstream, credentials["Authorization"]


@api_view(ANY_METHOD, scope="tokens:read", denied="proxy.denied")
def _proxied(request: ServiceRequest, slug: str, path: str) -> HttpResponseBase:
    started = time.monotonic()
    method = (request.method or "").upper()
    where: dict[str, Any] = {"method": method, "path": "/" + path, "provider": slug}
    if not proxy_paths.METHOD.fullmatch(method):
        raise invalid_request("the method must be an HTTP method name")
    if method in proxy_paths.NEVER_FORWARDED_METHODS:
        raise ApiError(
            405,
            "method_not_allowed",
            f"the proxy never forwards {method}: it would echo the user's credentials "
            "(TRACE, TRACK) or open a tunnel past the rules (CONNECT)",
            {"Allow": FORWARDED_METHODS},
            **where,
        )
    try:
        proxy_paths.check_raw_request_path(
            request.META.get("RAW_URI") or request.META.get("REQUEST_URI")
        )
        segments = proxy_paths.segments_of(path.removesuffix("/"))
    except proxy_paths.PathRefused as exc:
        raise ApiError(400, "invalid_path", str(exc), **where) from None
    target = _target(request, slug, where)
    grant = target.grant
    where["grant_id"] = grant.pk
    where["subject_user"] = grant.user.username
    if not target.permission.may_proxy(method, segments):
        raise ApiError(
            403,
            "access_denied",
            f"this service's access rules do not let it send {method} to /{path} "
            f"of {slug!r} through the proxy",
            **where,
        )
    require_live(grant, **where)
    body = _request_body(request, where)
    _refuse_method_override(request, body, where)
    app = grant.provider_app
    url = _upstream_url(app, path, segments, request.META.get("QUERY_STRING", ""), where)
    headers = _forwarded_headers(request, app, method)
    call = _Call(request, target, method, "/" + path, started)
    grant = _fresh(grant, where)
    resources = ExitStack()
    try:
        session = resources.enter_context(
            provider_session(seconds=settings.BROKER_PROXY_TIMEOUT, keep_alive=True)
        )
        send = partial(
            _send, session, method=method, url=url, headers=headers, body=body, where=where
        )
        upstream, authorization = send(grant)
        if upstream.status_code == 401 and app.protocol == "oauth2":
            error_body = _read_error_body(upstream)
            if is_scope_mismatch(upstream, error_body):
                raise ApiError(
                    403,
                    "insufficient_scope",
                    "the provider refused the call for a missing scope (Atlassian: "
                    f"'scope does not match'); the user's grant carries: "
                    f"{' '.join(sorted(grant.scopes)) or '(none)'}; the user must connect "
                    "again with the scope this endpoint needs",
                    scopes=sorted(grant.scopes),
                    upstream_status=401,
                    **where,
                )
            grant = _renewed(grant, where)
            call.refreshed = True
            upstream, authorization = send(grant)
        declared = upstream.headers.get("Content-Length", "")
        limit = settings.BROKER_PROXY_MAX_RESPONSE_BYTES
        if declared.isdigit() and int(declared) > limit:
            upstream.close()
            raise ApiError(
                502,
                "response_too_large",
                f"the provider's answer is larger than {limit} bytes",
                upstream_status=upstream.status_code,
                **where,
            )
        grant_lookup.note_use(grant, request.broker_token.service_id)
        relay = _checked_relay(upstream, resources, call, authorization, where)
        response = UpstreamResponse(relay, status=upstream.status_code)
        del response["Content-Type"]  # the provider's, or none
        for name, value in _returned_headers(upstream).items():
            response[name] = value
        resources = ExitStack()  # handed to the relay, which closes them
        return response
    finally:
        resources.close()


def _checked_relay(
    upstream: requests.Response,
    resources: ExitStack,
    call: _Call,
    authorization: str,
    where: dict[str, Any],
) -> _Relay:
    """The relay of an answer whose headers and first bytes hold no credential (502
    `credential_echoed` otherwise) and whose body the broker can decode to check it."""
    secrets = credential_echo.secrets_of(authorization)
    echoed = ApiError(
        502,
        "credential_echoed",
        "the provider's answer holds the credential the broker sent with the request; it is "
        "not relayed",
        upstream_status=upstream.status_code,
        **where,
    )
    if credential_echo.in_headers(upstream.headers.items(), secrets):
        upstream.close()
        raise echoed
    unknown = [coding for coding in _content_codings(upstream) if coding not in DECODABLE]
    if unknown:
        upstream.close()
        raise ApiError(
            502,
            "unsupported_content_encoding",
            f"the provider's answer is encoded with {', '.join(unknown)}, which the broker "
            "cannot decode to check it",
            upstream_status=upstream.status_code,
            **where,
        )
    relay = _Relay(upstream, resources, call, credential_echo.BodyCheck(secrets))
    try:
        relay.read_ahead()
    except credential_echo.CredentialEchoed:
        upstream.close()
        raise echoed from None
    return relay


@csrf_exempt
def proxy(request: HttpRequest, slug: str, path: str | None = None) -> HttpResponseBase:
    """`/api/v1/proxy/<app-slug>/<path>`, any method."""
    response = _proxied(request, slug, path or "")
    if not isinstance(response, UpstreamResponse):
        try:
            error = json.loads(getattr(response, "content", b"")).get("error", "")
        except (ValueError, AttributeError):
            error = "server_error"
        response["Broker-Error"] = error or "server_error"
    return response
