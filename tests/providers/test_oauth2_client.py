"""How token requests are encoded per kind, and how token endpoint answers are classified."""

import json
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from broker.models import ProviderApp
from broker.providers.oauth2_client import (
    ClientMisconfigured,
    GrantRejected,
    ParametersAsTheKindWants,
    TransientTokenError,
    classify,
    parse_token,
)

PARAMS = "grant_type=refresh_token&refresh_token=rt-1&redirect_uri=https%3A%2F%2Fb%2Fcb"


def prepared(encoding):
    request = requests.Request(
        "POST",
        "https://provider.example/oauth/token?existing=1",
        data=PARAMS,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ).prepare()
    return ParametersAsTheKindWants(encoding, "client-1", "secret-1")(request)


def test_atlassian_sends_a_json_body_with_the_client_secret():
    request = prepared("json")
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.body) == {
        "grant_type": "refresh_token",
        "refresh_token": "rt-1",
        "redirect_uri": "https://b/cb",
        "client_id": "client-1",
        "client_secret": "secret-1",
    }
    assert int(request.headers["Content-Length"]) == len(request.body)


def test_data_center_sends_the_parameters_in_the_query_string():
    request = prepared("query")
    query = parse_qs(urlsplit(request.url).query)
    assert query["grant_type"] == ["refresh_token"]
    assert query["client_secret"] == ["secret-1"]
    assert query["redirect_uri"] == ["https://b/cb"]
    assert query["existing"] == ["1"]
    assert request.body is None
    assert request.headers["Content-Length"] == "0"


def test_generic_providers_get_a_form_body():
    request = prepared("form")
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert parse_qs(request.body.decode())["client_id"] == ["client-1"]
    assert urlsplit(request.url).query == "existing=1"


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
