"""Malformed input to the internal API: always a 4xx JSON error, never a 500 (run on SQLite
and on PostgreSQL, which refuses NUL in text)."""

from __future__ import annotations

import base64
import json
from urllib.parse import urlencode

import pytest
from django.test import Client

from broker.models import AuditEvent
from tests.api.conftest import TOKEN_URL, audit_events, post_form

pytestmark = pytest.mark.django_db

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.fixture
def api() -> Client:
    # A 500 must show as a status here, not as an exception raised into the test.
    return Client(raise_request_exception=False)


def assert_json_error(response, status: int) -> dict:
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"] == "application/json"
    body: dict = response.json()
    assert set(body) == {"error", "error_description"}
    return body


def unsigned_assertion(header: dict, claims: dict) -> str:
    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part(header)}.{part(claims)}.c2lnbmF0dXJl"


def assertion_form(assertion: str, **extra: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
        **extra,
    }


def test_json_nested_100000_deep_is_a_400(api, rule, bearer):
    body = "[" * 100_000 + "]" * 100_000
    response = api.post("/api/v1/access-token", body, content_type="application/json", **bearer())
    description = assert_json_error(response, 400)["error_description"]
    assert description == "the body is nested more than 32 levels deep"


def test_a_3_mb_json_body_is_a_413(api, rule, bearer):
    body = json.dumps({"user": "alice", "provider": "atlassian", "scopes": ["x" * 3_000_000]})
    response = api.post("/api/v1/access-token", body, content_type="application/json", **bearer())
    assert_json_error(response, 413)


def test_a_3_mb_token_request_is_a_413_and_issues_nothing(api, service_with_secret):
    service, secret = service_with_secret
    form = {"grant_type": "client_credentials", "client_id": service.client_id}
    body = urlencode({**form, "client_secret": secret, "padding": "x" * 3_000_000})
    response = api.post(TOKEN_URL, body, content_type="application/x-www-form-urlencoded")
    assert "access_token" not in assert_json_error(response, 413)
    assert not audit_events(action="service.authenticated")


@pytest.mark.parametrize(
    "path, fields",
    [
        ("/api/v1/access-token", {}),
        ("/api/v1/sign", {"method": "GET", "url": "https://x.example/"}),
        ("/api/v1/connect-links", {"return_to": "https://x.example/"}),
    ],
)
def test_a_lone_surrogate_in_user_is_a_400(api, rule, bearer, path, fields):
    rule.can_sign = True
    rule.save()
    # json.dumps would escape the surrogate the same way: "\ud800" in the JSON text.
    body = json.dumps({"provider": "atlassian", **fields})[:-1] + ', "user": "\\ud800"}'
    response = api.post(path, body, content_type="application/json", **bearer())
    description = assert_json_error(response, 400)["error_description"]
    assert description == "field 'user' must be valid Unicode text"


@pytest.mark.parametrize("key_name", ["kid", "x5t#S256"])
@pytest.mark.parametrize("bad", ["key\x00id", "key\ud800id"])
def test_a_nul_or_surrogate_in_the_assertions_key_name_is_invalid_client(
    api, service_with_secret, key_name, bad
):
    service, _ = service_with_secret
    claims = {"iss": service.client_id, "sub": service.client_id, "aud": "x", "exp": 1}
    assertion = unsigned_assertion({"alg": "RS256", key_name: bad}, claims)
    response = post_form(api, assertion_form(assertion))
    assert assert_json_error(response, 401)["error"] == "invalid_client"
    (event,) = audit_events(action="service.auth_failed")
    assert event.detail["reason"] == "unknown key"


def test_a_nul_in_an_api_query_parameter_is_a_400(api, rule, bearer):
    response = api.get("/api/v1/grants?user=alice%00", **bearer())
    assert_json_error(response, 400)


def test_a_huge_parameter_name_is_neither_echoed_nor_stored_whole(api):
    """Audit amplification: an unauthenticated request may make the broker write or echo a
    few hundred bytes, never what it sent (here 800 kB)."""
    name = "n" * 400_000
    body = f"grant_type=client_credentials&{name}=1&{name}=2"
    response = api.post(TOKEN_URL, body, content_type="application/x-www-form-urlencoded")
    assert len(response.content) < 1000
    assert assert_json_error(response, 400)["error_description"].startswith("parameter 'nnn")
    (event,) = audit_events(action="service.auth_failed")
    stored = json.dumps(event.detail) + event.actor + event.service
    assert len(stored) < 2000


def test_a_huge_claimed_client_id_is_not_stored_whole(api):
    claims = {"iss": "c" * 200_000, "sub": "c" * 200_000}
    response = post_form(api, assertion_form(unsigned_assertion({"alg": "RS256"}, claims)))
    assert len(response.content) < 1000
    assert_json_error(response, 401)
    (event,) = audit_events(action="service.auth_failed")
    assert len(event.actor) <= 255 and len(event.service) <= 64


def test_the_lone_surrogate_issuer_attack_does_not_stop_the_audit_trail(api, service_with_secret):
    """The attack of issue 10, item 10: an assertion whose unverified iss is a lone
    surrogate, with and without a client_id that differs from it. The refusals are
    audited (escaped), and later events still reach the database."""
    claims = {"iss": "\ud800", "sub": "\ud800"}
    assertion = unsigned_assertion({"alg": "RS256", "kid": "k"}, claims)
    for extra in ({"client_id": "someone"}, {}):
        response = post_form(api, assertion_form(assertion, **extra))
        assert assert_json_error(response, 401)["error"] == "invalid_client"
    service, secret = service_with_secret
    response = post_form(
        api,
        {
            "grant_type": "client_credentials",
            "client_id": service.client_id,
            "client_secret": secret,
        },
    )
    assert response.status_code == 200
    failed = audit_events(action="service.auth_failed")
    assert [e.actor for e in failed] == ["\\ud800", "\\ud800"]
    assert AuditEvent.objects.filter(action="service.authenticated", actor=service.client_id)


def test_a_huge_unknown_field_name_is_not_echoed_whole(api, rule, bearer):
    body = json.dumps({"n" * 400_000: 1, "user": "alice", "provider": "atlassian"})
    response = api.post("/api/v1/access-token", body, content_type="application/json", **bearer())
    description = assert_json_error(response, 400)["error_description"]
    assert description == "unknown field '" + "n" * 100 + "'..."
    assert len(response.content) < 1000


@pytest.mark.parametrize(
    "fields, description",
    [
        # The words of the hand-written checks, kept: services may match on them.
        ({"grant": None}, "field 'grant' must be a string"),
        ({"grant": "x" * 500_000}, "field 'grant' must be 1 to 2000 characters long"),
        ({"grant": "not-a-uuid"}, "field 'grant' must be a UUID"),
        ({"user": "", "provider": "atlassian"}, "field 'user' must be 1 to 150 characters long"),
        ({"user": ["alice"], "provider": "atlassian"}, "field 'user' must be a string"),
        ({"min_ttl": "60"}, "field 'min_ttl' must be an integer"),
        ({"min_ttl": True}, "field 'min_ttl' must be an integer"),
        ({"min_ttl": 1.5}, "field 'min_ttl' must be an integer"),
        ({"min_ttl": -1}, "field 'min_ttl' must be at least 0"),
        ({"force_refresh": 1}, "field 'force_refresh' must be a boolean"),
        ({"scopes": ["read:me", ""]}, "field 'scopes' must be a list of strings"),
        ({"scopes": ["s"] * 101}, "field 'scopes' must be a list of strings"),
        # An unknown field is named before a bad known one.
        ({"min_ttl": "x", "colour": "red"}, "unknown field 'colour'"),
    ],
)
def test_a_bad_field_is_named_in_few_words_never_with_its_value(
    api, rule, bearer, fields, description
):
    body = json.dumps(fields)
    response = api.post("/api/v1/access-token", body, content_type="application/json", **bearer())
    assert assert_json_error(response, 400)["error_description"] == description
    assert len(response.content) < 1000


def test_an_integral_float_is_an_integer(api, rule, bearer, grant):
    # JSON Schema: 60.0 is an integer; the service is served as for 60.
    body = json.dumps({"grant": str(grant.pk), "min_ttl": 60.0})
    response = api.post("/api/v1/access-token", body, content_type="application/json", **bearer())
    assert response.status_code == 200, response.content
