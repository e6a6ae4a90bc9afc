"""Services authenticating with an app token from a trusted identity provider (Azure AD
style), validated against a local JWKS: no network beyond 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt
from joserfc.jwk import RSAKey

from broker.infra import key_sets
from broker.models import ServiceClient
from broker.service_identity import tokens
from tests.api.conftest import audit_events, post_form

pytestmark = pytest.mark.django_db

TENANT = "11111111-2222-3333-4444-555555555555"
ISSUER = f"https://login.microsoftonline.com/{TENANT}/v2.0"
AUDIENCE = "api://oauth-broker"
APP_ID = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def new_key(kid: str) -> RSAKey:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return RSAKey.import_key(private, {"kid": kid})


@pytest.fixture
def idp_key() -> RSAKey:
    return new_key("idp-1")


@pytest.fixture
def trusted(settings, tmp_path, idp_key):
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [idp_key.as_dict(private=False)]}))
    service = ServiceClient.objects.create(client_id="reports-az", name="Reports (Azure)")
    settings.BROKER_TRUSTED_ISSUERS = [
        {
            "issuer": ISSUER,
            "jwks_file": str(jwks),
            "audience": AUDIENCE,
            "tenant": TENANT,
            "required_role": "Broker.Client",
            "applications": {APP_ID: "reports-az"},
        }
    ]
    yield service


def app_token(key: RSAKey, **overrides: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "tid": TENANT,
        "idtyp": "app",
        "azp": APP_ID,
        "roles": ["Broker.Client"],
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
    }
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode({"alg": "RS256", "kid": key.kid}, claims, key)


def exchange(api, token: str):
    return post_form(
        api,
        {
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": token,
        },
    )


def test_an_app_token_from_a_trusted_issuer_authenticates_the_mapped_service(api, trusted, idp_key):
    response = exchange(api, app_token(idp_key))
    assert response.status_code == 200, response.content
    assert tokens.parse(response.json()["access_token"]).client_id == "reports-az"
    [event] = audit_events(action="service.authenticated")
    assert event.detail["method"] == "federated_token"


def test_appid_works_like_azp_for_v1_tokens(api, trusted, idp_key):
    response = exchange(api, app_token(idp_key, azp=None, appid=APP_ID))
    assert response.status_code == 200


@pytest.mark.parametrize(
    "change",
    [
        {"tid": "99999999-2222-3333-4444-555555555555"},
        {"idtyp": "user"},
        {"idtyp": None},
        {"azp": "ffffffff-0000-0000-0000-000000000000"},
        {"roles": ["Something.Else"]},
        {"roles": None},
        {"aud": "api://another-api"},
        {"exp": int(time.time()) - 600},
        {"nbf": int(time.time()) + 600},
    ],
)
def test_it_refuses_app_tokens_that_do_not_fit(api, trusted, idp_key, change):
    response = exchange(api, app_token(idp_key, **change))
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"
    assert "access_token" not in response.json()
    assert audit_events(action="service.auth_failed", outcome="denied")


# The service principal's object id: `oid` and `sub` of its app-only tokens.
SERVICE_PRINCIPAL = "0f0e0d0c-0b0a-0908-0706-050403020100"
WITHOUT_IDTYP = {"idtyp": None, "oid": SERVICE_PRINCIPAL, "sub": SERVICE_PRINCIPAL}


def test_an_app_token_without_the_optional_idtyp_passes_microsofts_app_only_test(
    api, trusted, idp_key
):
    response = exchange(api, app_token(idp_key, **WITHOUT_IDTYP))
    assert response.status_code == 200, response.content
    assert tokens.parse(response.json()["access_token"]).client_id == "reports-az"


@pytest.mark.parametrize(
    "change",
    [
        # A user's (delegated) token for the same app: scp, the user's oid, a pairwise sub.
        {"scp": "access_as_user", "roles": None, "sub": "pairwise-subject-of-the-user"},
        {"scp": "access_as_user"},  # scp means delegated, even beside roles and oid=sub
        {"roles": None},
        {"roles": []},
        {"sub": "another-subject"},
        {"oid": None},
        {"oid": None, "sub": None},
        {"idtyp": "user"},  # when idtyp is there, it decides
    ],
)
def test_without_idtyp_user_tokens_are_still_refused(api, trusted, idp_key, change):
    response = exchange(api, app_token(idp_key, **{**WITHOUT_IDTYP, **change}))
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"
    assert "access_token" not in response.json()
    assert audit_events(action="service.auth_failed", outcome="denied")


def test_it_refuses_a_token_signed_by_a_key_outside_the_jwks(api, trusted):
    impostor = new_key("idp-1")  # same kid, other key
    assert exchange(api, app_token(impostor)).status_code == 401


def test_a_disabled_service_cannot_use_its_app_token(api, trusted, idp_key):
    tokens.disable_service(trusted)
    assert exchange(api, app_token(idp_key)).status_code == 401


def test_without_trusted_issuers_app_tokens_are_just_bad_assertions(
    api, trusted, idp_key, settings
):
    settings.BROKER_TRUSTED_ISSUERS = []
    assert exchange(api, app_token(idp_key)).status_code == 401


def test_the_jwks_is_fetched_over_http_and_refetched_for_a_new_kid(
    api, trusted, settings, key_set_clock
):
    keys = {"current": new_key("k-old")}
    hits = []

    class JWKS(BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            body = json.dumps({"keys": [keys["current"].as_dict(private=False)]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), JWKS)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = dict(settings.BROKER_TRUSTED_ISSUERS[0])
        del config["jwks_file"]
        config["jwks_uri"] = f"http://127.0.0.1:{server.server_port}/keys"
        settings.BROKER_TRUSTED_ISSUERS = [config]
        key_sets.forget()
        assert exchange(api, app_token(keys["current"])).status_code == 200
        assert exchange(api, app_token(keys["current"])).status_code == 200
        assert len(hits) == 1  # cached
        keys["current"] = new_key("k-new")  # the issuer rotates its signing key
        assert exchange(api, app_token(keys["current"])).status_code == 401
        assert len(hits) == 1  # an unknown kid fetches nothing within the interval
        key_set_clock.pass_refetch_interval()
        assert exchange(api, app_token(keys["current"])).status_code == 200
        assert len(hits) == 2
    finally:
        server.shutdown()
