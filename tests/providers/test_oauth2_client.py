"""How token requests are encoded per kind, and how token endpoint answers are classified."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from broker.models import ProviderApp
from broker.providers import oauth2_client
from broker.providers.oauth2_client import (
    ClientMisconfigured,
    GrantRejected,
    TransientTokenError,
    classify,
    parse_token,
)
from tests.factories import make_app
from tests.local_http import start_local_server


@pytest.fixture
def provider():
    server = start_local_server()
    yield server
    server.stop()


def refresh_at(provider, kind):
    """A refresh of an app of `kind` whose token endpoint is the local server; what the
    server received."""
    url = f"{provider.url}/t"
    app = make_app(kind, kind=kind, client_id="client-1", secret="secret-1", base_url=provider.url)
    app.endpoints = {"token": f"{url}?existing=1"}
    provider.bodies.append(b'{"access_token": "a", "refresh_token": "r2", "expires_in": 3600}')
    oauth2_client.refresh(app, refresh_token="rt-1", redirect_uri="https://b/cb")
    (received,) = provider.requests
    return received


@pytest.mark.django_db
def test_atlassian_sends_a_json_body_with_the_client_secret(provider):
    received = refresh_at(provider, "atlassian")
    assert received.headers["content-type"] == "application/json"
    assert received.headers["accept"] == "application/json"
    assert json.loads(received.body) == {
        "grant_type": "refresh_token",
        "refresh_token": "rt-1",
        "client_id": "client-1",
        "client_secret": "secret-1",
    }
    assert int(received.headers["content-length"]) == len(received.body)
    assert urlsplit(received.path).query == "existing=1"


@pytest.mark.django_db
def test_data_center_sends_the_parameters_in_the_query_string(provider):
    received = refresh_at(provider, "jira-dc-oauth2")
    query = parse_qs(urlsplit(received.path).query)
    assert query["grant_type"] == ["refresh_token"]
    assert query["client_secret"] == ["secret-1"]
    assert query["redirect_uri"] == ["https://b/cb"]
    assert query["existing"] == ["1"]
    assert received.body == b""
    assert received.headers["content-length"] == "0"


@pytest.mark.django_db
def test_generic_providers_get_a_form_body(provider):
    received = refresh_at(provider, "oauth2")
    assert received.headers["content-type"] == "application/x-www-form-urlencoded"
    assert parse_qs(received.body.decode()) == {
        "grant_type": ["refresh_token"],
        "refresh_token": ["rt-1"],
        "client_id": ["client-1"],
        "client_secret": ["secret-1"],
    }
    assert urlsplit(received.path).query == "existing=1"


@pytest.mark.django_db
def test_a_token_request_looks_like_a_requests_session_s(provider):
    received = refresh_at(provider, "oauth2")
    assert received.headers["user-agent"] == requests.utils.default_user_agent()
    assert received.headers["connection"] == "keep-alive"
    assert "gzip" in received.headers["accept-encoding"]


@pytest.fixture
def redirecting(provider):
    """A token endpoint that answers 307 to the local server (which records requests)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(307)
            self.send_header("Location", f"{provider.url}/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.django_db
def test_a_redirect_is_not_followed_with_the_client_secret(provider, redirecting):
    app = make_app("moved", client_id="client-1", secret="secret-1")
    app.endpoints = {"token": f"{redirecting}/t"}
    with pytest.raises(ClientMisconfigured) as raised:
        oauth2_client.refresh(app, refresh_token="rt-1", redirect_uri="https://b/cb")
    assert raised.value.error == "http_307"
    assert provider.requests == []


def response(status, body, headers=None):
    resp = requests.Response()
    resp.status_code = status
    resp._content = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    resp.headers.update(headers or {})
    return resp


@pytest.mark.parametrize(
    ("status", "body", "kind", "error"),
    [
        (
            403,
            {"error": "invalid_grant", "error_description": "Unknown"},
            GrantRejected,
            "invalid_grant",
        ),
        (403, {"error": "unauthorized_client"}, GrantRejected, "unauthorized_client"),
        (400, {"error": "invalid_scope"}, GrantRejected, "invalid_scope"),
        (401, {"error": "invalid_client"}, ClientMisconfigured, "invalid_client"),
        (403, {"error": "access_denied"}, ClientMisconfigured, "access_denied"),
        (401, {"message": "nope"}, ClientMisconfigured, "http_401"),
        (404, "<html>not found</html>", ClientMisconfigured, "http_404"),
        (500, {"error": "server_error"}, TransientTokenError, "http_500"),
        (502, "<html>bad gateway</html>", TransientTokenError, "http_502"),
        (429, {"error": "rate"}, TransientTokenError, "http_429"),
        (400, {"error": "temporarily_unavailable"}, TransientTokenError, "temporarily_unavailable"),
        (200, {"token_type": "Bearer"}, ClientMisconfigured, "invalid_response"),
    ],
)
def test_failures_are_sorted_into_the_three_kinds(status, body, kind, error):
    with pytest.raises(kind) as raised:
        classify(response(status, body))
    assert type(raised.value) is kind
    assert raised.value.error == error


def test_retry_after_is_kept_for_rate_limits():
    with pytest.raises(TransientTokenError) as raised:
        classify(response(429, {}, {"Retry-After": "7"}))
    assert raised.value.retry_after == 7.0


def test_a_good_answer_passes():
    good = response(200, {"access_token": "a", "expires_in": 3600})
    assert classify(good) is good


def test_a_missing_refresh_token_reads_as_none():
    app = ProviderApp(kind="atlassian")
    parsed = parse_token({"access_token": "a", "refresh_token": "old"}, app, "old")
    assert parsed.refresh_token is None
    parsed = parse_token({"access_token": "a", "refresh_token": "new", "scope": "a b"}, app, "old")
    assert parsed.refresh_token == "new"
    assert parsed.scopes == ["a", "b"]
    assert "new" not in repr(parsed)
