"""What the proxy never forwards (TRACE, TRACK, CONNECT, method overrides) and never relays
(an answer that echoes the credential the broker put in), against a local upstream that
echoes what it receives and records every request."""

from __future__ import annotations

import base64
import gzip
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command

from broker.api import credential_echo
from broker.catalog.proxy_paths import validate_proxy_methods
from broker.models import AccessRule, Grant, ProviderApp
from tests.api.conftest import audit_events, body_of, proxy_headers
from tests.factories import consented_grant, service_and_secret

pytestmark = pytest.mark.django_db

PROXY = "/api/v1/proxy/echo"
OVERRIDES = {
    "HTTP_X_HTTP_METHOD_OVERRIDE": "DELETE",
    "HTTP_X_HTTP_METHOD": "DELETE",
    "HTTP_X_METHOD_OVERRIDE": "DELETE",
}
# Headers some servers read as the path to serve, or its prefix (issue 25, item 2).
PATH_OVERRIDES = {
    "HTTP_X_ORIGINAL_URL": "/secret/admin",
    "HTTP_X_ORIGINAL_URI": "/secret/admin",
    "HTTP_X_REWRITE_URL": "/secret/admin",
    "HTTP_X_FORWARDED_PREFIX": "/secret",
}
FILLER = b"x" * 200_000  # past what the proxy checks before it sends the status


@dataclass
class Echo:
    """An upstream that answers every method with what it received, in the way its path
    names (`/api/<how>`), and records each request (method, path, headers)."""

    server: ThreadingHTTPServer
    received: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"


def start_echo() -> Echo:
    holder: dict[str, Echo] = {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def answer(self) -> None:
            state = holder["state"]
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            with state.lock:
                state.received.append((self.command, self.path, headers))
            how = urlsplit(self.path).path.rsplit("/", 1)[-1]
            authorization = headers.get("authorization", "")
            credential = authorization.partition(" ")[2]
            signature = parse_qs(authorization.replace('"', "").replace(", ", "&")).get(
                "oauth_signature", [""]
            )[0]
            echoed = json.dumps({"method": self.command, "headers": headers}).encode()
            extra: dict[str, str] = {}
            chunks = [echoed]
            if how == "plain":
                chunks = [b'{"ok": true}']
            elif how == "header":
                chunks, extra = [b"{}"], {"X-Debug-Authorization": authorization}
            elif how == "location":
                chunks, extra = [b""], {"Location": f"https://elsewhere.example/?t={credential}"}
            elif how == "gzip":
                chunks, extra = [gzip.compress(echoed)], {"Content-Encoding": "gzip"}
            elif how == "split":  # the token across two chunks of the body
                chunks = [b'{"token": "' + credential[:9].encode(), credential[9:].encode() + b'"}']
            elif how == "late":  # past the first 64 KiB, across two chunks too
                chunks = [FILLER + credential[:9].encode(), credential[9:].encode() + b"tail"]
            elif how == "signature":  # an OAuth 1.0a signature, decoded, JSON-escaped
                chunks = [b'{"seen": "' + signature.replace("/", "\\/").encode() + b'"}']
            elif how == "gzipped-plain":
                chunks, extra = [gzip.compress(b'{"ok": true}')], {"Content-Encoding": "gzip"}
            elif how == "compress":
                chunks, extra = [b"\x1f\x9d..."], {"Content-Encoding": "compress"}
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for chunk in chunks:
                if chunk:
                    self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = answer
        do_TRACE = do_TRACK = do_CONNECT = answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    holder["state"] = Echo(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return holder["state"]


@pytest.fixture
def echo() -> Iterator[Echo]:
    server = start_echo()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture
def app(echo) -> ProviderApp:
    return ProviderApp.objects.create(
        slug="echo",
        kind="oauth2",
        name="Echo",
        client_id="echo",
        scopes=["api"],
        endpoints={"token": f"{echo.url}/oauth/token", "api": f"{echo.url}/api"},
    )


@pytest.fixture
def grant(owner, app) -> Grant:
    return consented_grant(owner, app)


@pytest.fixture
def service(app) -> tuple[Any, str]:
    """A proxy-only service whose rule names no method and no path."""
    service, secret = service_and_secret()
    AccessRule.objects.create(service=service, provider_app=app, proxy_only=True)
    return service, secret


@pytest.fixture
def headers(api, service) -> dict[str, str]:
    return proxy_headers(api, service)


def everything(response) -> bytes:
    """All the service gets: status line aside, the headers and the body."""
    head = "\n".join(f"{name}: {value}" for name, value in response.items())
    return head.encode() + b"\n" + body_of(response)


# --- methods ------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["TRACE", "TRACK", "CONNECT"])
def test_trace_track_and_connect_are_refused_unsent_even_with_no_method_list(
    api, echo, grant, headers, method
):
    response = api.generic(method, f"{PROXY}/plain", **headers)

    assert response.status_code == 405, response.content
    assert response["Broker-Error"] == "method_not_allowed" == response.json()["error"]
    assert "TRACE" not in response["Allow"] and "GET" in response["Allow"]
    assert grant.unseal("access_token") not in response.content.decode()
    assert echo.received == []
    [event] = audit_events(action="proxy.denied")
    assert event.detail["reason"] == "method_not_allowed" and event.detail["method"] == method


@pytest.mark.django_db(transaction=True)
def test_trace_over_http_brings_back_no_credential(live_server, echo, grant, service):
    """The attack as it was seen: a proxy-only service sends TRACE over HTTP."""
    token = requests.post(
        f"{live_server.url}/api/v1/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(service[0].client_id, service[1]),
        timeout=10,
    ).json()["access_token"]

    response = requests.request(
        "TRACE",
        f"{live_server.url}{PROXY}/plain",
        headers={"Authorization": f"Bearer {token}", "Broker-User": "alice"},
        timeout=10,
    )

    assert (response.status_code, response.headers["Broker-Error"]) == (405, "method_not_allowed")
    assert grant.unseal("access_token") not in response.text
    assert echo.received == []


def test_a_rule_cannot_name_a_method_that_is_never_forwarded(app, service):
    for method in ("TRACE", "TRACK", "CONNECT"):
        with pytest.raises(CommandError, match="never forwarded"):
            call_command(
                "addaccessrule", service[0].client_id, "--provider", "echo",
                "--proxy-methods", f"GET,{method}",
            )  # fmt: skip
        with pytest.raises(ValidationError, match="never forwarded"):
            validate_proxy_methods(["GET", method])
    validate_proxy_methods(["GET", "POST"])


def test_method_override_headers_never_reach_the_upstream(api, echo, app, grant, service):
    AccessRule.objects.filter(service=service[0]).update(proxy_methods=["GET"])
    headers = proxy_headers(api, service)

    response = api.get(f"{PROXY}/plain", **headers, **OVERRIDES)

    assert response.status_code == 200 and json.loads(body_of(response)) == {"ok": True}
    [(method, _, sent)] = echo.received
    assert method == "GET"
    for name in ("x-http-method-override", "x-http-method", "x-method-override"):
        assert name not in sent, name


def test_path_override_headers_never_reach_the_upstream(api, echo, grant, headers):
    response = api.get(f"{PROXY}/plain", **headers, **PATH_OVERRIDES)

    assert response.status_code == 200 and json.loads(body_of(response)) == {"ok": True}
    [(_, path, sent)] = echo.received
    assert path == "/api/plain"
    for name in ("x-original-url", "x-original-uri", "x-rewrite-url", "x-forwarded-prefix"):
        assert name not in sent, name


@pytest.mark.parametrize(
    ("query", "form"),
    [("_method=DELETE", ""), ("a=1&_METHOD=delete", ""), ("", "_method=DELETE&summary=x")],
)
def test_a_method_override_parameter_is_refused_unsent(api, echo, grant, headers, query, form):
    response = api.post(
        f"{PROXY}/plain?{query}",
        form,
        content_type="application/x-www-form-urlencoded",
        **headers,
    )

    assert response.status_code == 400, response.content
    assert (
        response["Broker-Error"] == "invalid_request"
        and "_method" in response.json()["error_description"]
    )
    assert echo.received == []


# --- answers echoing the credential ---------------------------------------------------------


@pytest.mark.parametrize("how", ["body", "header", "location", "gzip", "split"])
def test_an_answer_echoing_the_bearer_token_is_502_and_audited(api, echo, grant, headers, how):
    token = grant.unseal("access_token")

    response = api.get(f"{PROXY}/{how}", **headers)

    seen = everything(response)
    assert response.status_code == 502, seen
    assert response["Broker-Error"] == "credential_echoed" == response.json()["error"]
    assert token.encode() not in seen and token[:9].encode() not in seen
    [(_, _, sent)] = echo.received
    assert sent["authorization"] == f"Bearer {token}"  # the upstream did get it, and echoed it
    [event] = audit_events(action="proxy.denied")
    assert event.detail["reason"] == "credential_echoed" and event.detail["upstream_status"] == 200
    assert token not in json.dumps(event.detail)


def test_an_echo_past_the_start_of_the_body_cuts_the_relay_before_it(api, echo, grant, headers):
    token = grant.unseal("access_token")

    response = api.get(f"{PROXY}/late", **headers)

    assert response.status_code == 200  # sent before the echo could be seen
    relayed = body_of(response)
    assert token[:9].encode() not in relayed and len(relayed) <= len(FILLER)
    [event] = audit_events(action="proxy.called")
    assert event.detail["credential_echoed"] is True and event.detail["complete"] is False


def test_an_answer_the_broker_cannot_decode_is_not_relayed(api, echo, grant, headers):
    response = api.get(f"{PROXY}/compress", **headers)
    assert (response.status_code, response["Broker-Error"]) == (
        502,
        "unsupported_content_encoding",
    )


def test_a_clean_gzip_answer_is_relayed_decoded(api, echo, grant, headers):
    """The body is decoded to be checked, and relayed so (no Content-Encoding); the
    upstream is asked only for encodings the broker can decode."""
    response = api.get(f"{PROXY}/gzipped-plain", HTTP_ACCEPT_ENCODING="br", **headers)

    assert response.status_code == 200 and json.loads(body_of(response)) == {"ok": True}
    assert "Content-Encoding" not in response and "Content-Length" not in response
    [(_, _, sent)] = echo.received
    assert "br" not in sent["accept-encoding"] and "gzip" in sent["accept-encoding"]


@pytest.mark.parametrize(
    ("authorization", "secret"),
    [
        ("Bearer eyJhbGciOi.payload/with+slash", "eyJhbGciOi.payload/with+slash"),
        ("Bearer eyJhbGciOi.payload/with+slash", "eyJhbGciOi.payload\\/with+slash"),
        ("Bearer eyJhbGciOi.payload/with+slash", "eyJhbGciOi.payload%2Fwith%2Bslash"),
        (f"Basic {base64.b64encode(b'alice@example.com:ATATT3xFfGF0secret').decode()}",
         "ATATT3xFfGF0secret"),
        ('OAuth oauth_consumer_key="broker", oauth_signature="q8%2Bx%2FZr0abcdefghij%3D"',
         "q8+x/Zr0abcdefghij="),
        ('OAuth oauth_consumer_key="broker", oauth_signature="q8%2Bx%2FZr0abcdefghij%3D"',
         "q8%2Bx%2FZr0abcdefghij%3D"),
    ],
)  # fmt: skip
def test_the_credential_is_found_in_the_forms_a_server_writes_it(authorization, secret):
    check = credential_echo.BodyCheck(credential_echo.secrets_of(authorization))
    with pytest.raises(credential_echo.CredentialEchoed):
        for piece in (b'{"a": "', secret[:5].encode(), secret[5:].encode(), b'"}'):
            check.passed(piece)


@pytest.fixture
def jira_echo(echo, jira_dc, owner, service) -> Grant:
    """An OAuth 1.0a Data Center app whose server is the echo."""
    jira_dc.base_url = f"{echo.url}/api"
    jira_dc.save()
    AccessRule.objects.create(service=service[0], provider_app=jira_dc)
    return consented_grant(owner, jira_dc, access_expires_at=None)


@pytest.mark.parametrize("how", ["body", "signature", "header"])
def test_an_answer_echoing_the_oauth1_signature_is_502(api, echo, jira_echo, headers, how):
    response = api.get(f"/api/v1/proxy/jira-acme/{how}", **headers)

    seen = everything(response)
    assert (response.status_code, response["Broker-Error"]) == (502, "credential_echoed"), seen
    [(_, _, sent)] = echo.received
    assert sent["authorization"].startswith("OAuth ")
    signature = parse_qs(sent["authorization"].replace('"', "").replace(", ", "&"))[
        "oauth_signature"
    ][0]
    assert signature.encode() not in seen and signature.replace("/", "\\/").encode() not in seen
