"""JSON and JWTs from outside are read by one bounded parser (broker.infra.bounded_json):
1,500 nested arrays (Python's parser recursed on them until RecursionError, a 500) or an
oversized token at each API entry point get the entry point's ordinary 4xx JSON, with its
audit row and its throttle, and nothing is issued, signed or forwarded."""

from __future__ import annotations

import base64
import json

import pytest

from accounts.models import ExternalIdentity
from broker.infra import bounded_json
from broker.models import AccessRule, Grant
from tests.api.conftest import audit_events, basic, fetch_token, post_form
from tests.factories import consented_grant, service_and_secret
from tests.subject_idp import AUDIENCE

pytestmark = pytest.mark.django_db

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
DEEP = "[" * 1500 + "]" * 1500
ATTACKER = "203.0.113.50"


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


def jwt_with(header: str, payload: str) -> str:
    return f"{b64(header)}.{b64(payload)}.{b64('not-a-signature')}"


HEADER = json.dumps({"alg": "RS256", "kid": "k1"})
HOSTILE_TOKENS = {
    "deep-payload": jwt_with(HEADER, DEEP),
    "deep-claim": jwt_with(HEADER, '{"iss": "x", "sub": "x", "aud": ' + DEEP + "}"),
    "deep-header": jwt_with('{"alg": "RS256", "x": ' + DEEP + "}", '{"iss": "x"}'),
    "oversized": jwt_with(HEADER, json.dumps({"iss": "x", "pad": "a" * 40_000})),
}
hostile = pytest.mark.parametrize("token", HOSTILE_TOKENS.values(), ids=HOSTILE_TOKENS.keys())


def test_the_parser_refuses_depth_and_size_and_reads_ordinary_json():
    assert bounded_json.loads('{"a": [1, {"b": "[[[["}]}') == {"a": [1, {"b": "[[[["}]}
    assert bounded_json.loads("[" * 32 + "]" * 32) == json.loads("[" * 32 + "]" * 32)
    for text in (DEEP, "[" * 33 + "]" * 33):
        with pytest.raises(ValueError, match="nested more than 32"):
            bounded_json.loads(text)
    with pytest.raises(ValueError, match="larger than 64 bytes"):
        bounded_json.loads('{"a": "' + "x" * 100 + '"}', max_bytes=64)
    # Brackets inside strings, escaped quotes and unclosed strings do not fool the count.
    assert bounded_json.nesting_depth('["\\"[[[", {"k": "]]]"}]') == 2
    assert bounded_json.nesting_depth('["\\"' + "[" * 100) == 1


def client_assertion(api, assertion: str):
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
    }
    return post_form(api, form, REMOTE_ADDR=ATTACKER)


@pytest.fixture(params=["keys", "federation"])
def trust(request, settings):
    """Client assertions with and without trusted identity providers
    (broker.service_identity.federation reads every assertion's issuer first when there are
    some)."""
    if request.param == "federation":
        settings.BROKER_TRUSTED_ISSUERS = [
            {"issuer": "https://idp.example", "jwks_uri": "https://idp.example/keys",
             "audience": "api://broker", "applications": {}}
        ]  # fmt: skip
    return request.param


@hostile
def test_a_hostile_client_assertion_is_invalid_client_audited_and_throttled(
    api, settings, trust, token
):
    settings.BROKER_AUTH_FAILURES_PER_ADDRESS = 3
    for _ in range(3):
        response = client_assertion(api, token)
        assert response.status_code == 401, response.content[:300]
        assert response.json()["error"] == "invalid_client"
    failures = audit_events(action="service.auth_failed")
    assert len(failures) == 3
    assert all(event.detail["method"] == "private_key_jwt" for event in failures)
    throttled = client_assertion(api, token)
    assert throttled.status_code == 429, throttled.content[:300]
    assert throttled.json()["error"] == "rate_limited" and "Retry-After" in throttled
    assert len(audit_events(action="service.auth_failed")) == 3
    assert not audit_events(action="service.authenticated")


@pytest.fixture
def acting_service(api, idp, owner, jira_dc):
    """A service registered for the IdP's audience, with an on-behalf-of rule that signs."""
    ExternalIdentity.objects.create(user=owner, issuer=idp.issuer, subject="alice-sub")
    service, secret = service_and_secret("assistant")
    service.subject_audiences = [AUDIENCE]
    service.save()
    AccessRule.objects.create(
        service=service, provider_app=jira_dc, can_sign=True, on_behalf_of=True
    )
    grant = consented_grant(owner, jira_dc, access_expires_at=None)
    return service, secret, grant


def nothing_served(grant: Grant) -> bool:
    grant.refresh_from_db()
    return grant.last_used_at is None and not audit_events(
        action__in=["token.exchanged", "token.issued", "request.signed", "proxy.called"]
    )


@hostile
def test_a_hostile_subject_token_in_token_exchange_is_invalid_request(api, acting_service, token):
    service, secret, grant = acting_service
    form = {
        "grant_type": EXCHANGE,
        "subject_token": token,
        "subject_token_type": ID_TOKEN,
        "audience": grant.provider_app.slug,
    }
    response = post_form(api, form, HTTP_AUTHORIZATION=basic(service.client_id, secret))
    assert response.status_code == 400, response.content[:300]
    assert response.json()["error"] == "invalid_request"
    assert "subject_token" in response.json()["error_description"]
    assert nothing_served(grant)


@hostile
def test_a_hostile_broker_subject_token_is_invalid_request_at_sign(api, acting_service, token):
    service, secret, grant = acting_service
    bearer = f"Bearer {fetch_token(api, service, secret)['access_token']}"
    body = {"grant": str(grant.pk), "method": "GET", "url": "https://jira.acme.example/x"}
    response = api.post(
        "/api/v1/sign",
        body,
        content_type="application/json",
        HTTP_AUTHORIZATION=bearer,
        HTTP_BROKER_SUBJECT_TOKEN=token,
    )
    assert response.status_code == 400, response.content[:300]
    assert response.json()["error"] == "invalid_request"
    assert "authorization" not in response.json()
    assert nothing_served(grant)


@hostile
def test_a_hostile_broker_subject_token_is_invalid_request_at_the_proxy(
    api, idp, owner, local_server, token
):
    ExternalIdentity.objects.create(user=owner, issuer=idp.issuer, subject="alice-sub")
    from broker.models import ProviderApp

    app = ProviderApp.objects.create(
        slug="upstream",
        kind="oauth2",
        name="Upstream",
        client_id="up",
        scopes=["api"],
        endpoints={"token": f"{local_server.url}/oauth/token", "api": f"{local_server.url}/api"},
    )
    grant = consented_grant(owner, app)
    service, secret = service_and_secret()
    service.subject_audiences = [AUDIENCE]
    service.save()
    AccessRule.objects.create(service=service, provider_app=app, on_behalf_of=True)
    bearer = f"Bearer {fetch_token(api, service, secret)['access_token']}"
    response = api.get(
        "/api/v1/proxy/upstream/v4/user", HTTP_AUTHORIZATION=bearer, HTTP_BROKER_SUBJECT_TOKEN=token
    )
    assert response.status_code == 400, response.content[:300]
    assert response.json()["error"] == "invalid_request"
    assert response["Broker-Error"] == "invalid_request"
    assert local_server.requests == []
    assert nothing_served(grant)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(DEEP, id="deep"),
        pytest.param('{"grant": ' + "[" * 40 + "]" * 40 + "}", id="deeper-than-the-limit"),
    ],
)
def test_a_deeply_nested_api_body_is_400_json(api, rule, bearer, grant, body):
    response = api.post("/api/v1/access-token", body, content_type="application/json", **bearer())
    assert response.status_code == 400, response.content[:300]
    assert response.json()["error"] == "invalid_request"
    assert "nest" in response.json()["error_description"]
    assert nothing_served(grant)


def test_a_deeply_nested_page_cursor_is_400_json(api, rule, bearer, grant):
    cursor = base64.urlsafe_b64encode(DEEP.encode()).decode().rstrip("=")
    response = api.get("/api/v1/grants", {"cursor": cursor}, **bearer())
    assert response.status_code == 400, response.content[:300]
    assert response.json()["error"] == "invalid_request"


def test_a_throttled_address_gets_429_for_a_hostile_assertion_too(api, settings):
    settings.BROKER_AUTH_FAILURES_PER_ADDRESS = 1
    assert client_assertion(api, "garbage").status_code == 401
    response = client_assertion(api, HOSTILE_TOKENS["deep-payload"])
    assert response.status_code == 429, response.content[:300]
    assert response.json()["error"] == "rate_limited"
    assert len(audit_events(action="service.auth_failed")) == 1


def test_a_deeply_nested_jwks_is_invalid_request_and_serves_nothing(api, idp, acting_service):
    service, secret, grant = acting_service
    idp.server.documents["/jwks"] = ('{"keys": ' + DEEP + "}").encode()
    form = {
        "grant_type": EXCHANGE,
        "subject_token": idp.token("alice-sub"),
        "subject_token_type": ID_TOKEN,
        "audience": grant.provider_app.slug,
    }
    response = post_form(api, form, HTTP_AUTHORIZATION=basic(service.client_id, secret))
    assert response.status_code == 400, response.content[:300]
    assert "cannot load the issuer's keys" in response.json()["error_description"]
    assert nothing_served(grant)
