"""Single sign-on against a fake OpenID Connect IdP on loopback (tests.local_http: its own
discovery, JWKS and token endpoints, and keys), which answers with the ID tokens a test
forges: every tampered one is refused on a clear page with no user or identity written."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography.hazmat.primitives import serialization
from django.contrib.auth.models import Group
from joserfc import jws, jwt
from joserfc.jwk import KeySet, RSAKey

from accounts.models import ExternalIdentity, User
from broker.admin.roles import AUDITOR_GROUP
from tests.local_http import start_trickling_server

pytestmark = pytest.mark.django_db
CLIENT_ID = "broker-test"


@pytest.fixture(scope="module")
def keys() -> dict[str, RSAKey]:
    return {kid: RSAKey.generate_key(2048, parameters={"kid": kid}) for kid in ("k1", "k2")}


@pytest.fixture
def idp(local_server, keys, settings):
    """The fake IdP, publishing key k1, and the broker configured to sign in with it."""
    local_server.documents["/.well-known/openid-configuration"] = json.dumps(
        {
            "issuer": local_server.url,
            "authorization_endpoint": f"{local_server.url}/authorize",
            "token_endpoint": f"{local_server.url}/token",
            "jwks_uri": f"{local_server.url}/jwks",
            "end_session_endpoint": f"{local_server.url}/logout",
            # A careless IdP lists every algorithm; the broker must still refuse these.
            "id_token_signing_alg_values_supported": ["RS256", "HS256", "none"],
        }
    ).encode()
    publish(local_server, keys["k1"])
    settings.BROKER_OIDC_ISSUER = local_server.url
    settings.BROKER_OIDC_CLIENT_ID = CLIENT_ID
    settings.BROKER_OIDC_CLIENT_SECRET = "test-secret"
    settings.BROKER_OIDC_ADMIN_GROUPS = ["admins"]
    settings.BROKER_OIDC_AUDITOR_GROUPS = ["auditors"]
    return local_server


def publish(server, *keys: RSAKey) -> None:
    server.documents["/jwks"] = json.dumps(KeySet(list(keys)).as_dict(private=False)).encode()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_for(idp, sent_nonce: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": idp.url,
        "sub": "00u-alice",
        "aud": CLIENT_ID,
        "iat": now,
        "exp": now + 300,
        "nonce": sent_nonce,
        "preferred_username": "alice.sso",
        "email": "alice@corp.example",
        "groups": ["engineering"],
    }
    claims.update(overrides)
    return {key: value for key, value in claims.items() if value is not None}


def signed(claims: dict[str, Any], key: RSAKey) -> str:
    return jwt.encode({"alg": "RS256", "kid": key.kid}, claims, key)


def start(client) -> dict[str, str]:
    """Presses the single sign-on button; returns the authorization request's parameters."""
    response = client.get("/accounts/oidc/login")
    assert response.status_code == 302, response.content
    return {
        key: values[0] for key, values in parse_qs(urlsplit(response["Location"]).query).items()
    }


def finish(client, idp, request: dict[str, str], id_token: str, **params: str):
    """The IdP answers the code exchange with `id_token`; the browser returns to the broker."""
    idp.bodies.append(
        json.dumps({"access_token": "at", "token_type": "Bearer", "id_token": id_token}).encode()
    )
    return client.get(
        "/accounts/oidc/callback", {"code": "the-code", "state": request["state"], **params}
    )


def sign_in(client, idp, key: RSAKey, **overrides: Any):
    request = start(client)
    return finish(client, idp, request, signed(claims_for(idp, request["nonce"], **overrides), key))


def assert_refused(response, text: str = "") -> None:
    assert response.status_code == 400, response.content
    assert text in response.content.decode()
    assert "_auth_user_id" not in response.wsgi_request.session
    assert not User.objects.exists() and not ExternalIdentity.objects.exists()
    assert not Group.objects.exclude(name=AUDITOR_GROUP).exists()


def test_it_signs_in_with_pkce_and_creates_the_linked_user(client, idp, keys):
    request = start(client)
    assert request["code_challenge_method"] == "S256" and request["nonce"] and request["state"]
    assert request["redirect_uri"] == "http://localhost:8000/accounts/oidc/callback"
    response = finish(client, idp, request, signed(claims_for(idp, request["nonce"]), keys["k1"]))
    assert response.status_code == 302 and response["Location"] == "/connections/"
    (token_request,) = [parse_qs(r.body.decode()) for r in idp.requests if r.path == "/token"]
    verifier = token_request["code_verifier"][0]
    challenge = b64(hashlib.sha256(verifier.encode()).digest())
    assert challenge == request["code_challenge"]
    user = User.objects.get()
    assert (user.username, user.email, user.has_usable_password()) == (
        "alice.sso",
        "alice@corp.example",
        False,
    )
    assert ExternalIdentity.objects.filter(user=user, issuer=idp.url, subject="00u-alice").exists()
    assert list(user.groups.values_list("name", flat=True)) == ["engineering"]
    assert client.get("/connections/").status_code == 200


@pytest.mark.parametrize(
    "tamper, expected",
    [
        ("signature", "could not be verified"),
        ("aud", "could not be verified"),
        ("nonce", "could not be verified"),
        ("expired", "could not be verified"),
        ("iss", "could not be verified"),
        ("alg-none", "could not be verified"),
        ("hs256-public-key", "could not be verified"),
        ("unknown-kid", "could not be verified"),
    ],
)
def test_a_tampered_id_token_is_refused_with_nothing_created(client, idp, keys, tamper, expected):
    request = start(client)
    key = keys["k1"]
    overrides: dict[str, Any] = {
        "aud": {"aud": "another-client"},
        "nonce": {"nonce": "not-the-nonce"},
        "expired": {"iat": int(time.time()) - 7200, "exp": int(time.time()) - 3600},
        "iss": {"iss": "https://evil.example"},
    }.get(tamper, {})
    claims = claims_for(idp, request["nonce"], **overrides)
    payload = b64(json.dumps(claims).encode())
    if tamper == "signature":
        header, _, signature = signed(claims_for(idp, request["nonce"], sub="00u-bob"), key).split(
            "."
        )
        token = f"{header}.{payload}.{signature}"  # Bob's signature over Alice's claims
    elif tamper == "alg-none":
        token = f"{b64(json.dumps({'alg': 'none', 'kid': 'k1'}).encode())}.{payload}."
    elif tamper == "hs256-public-key":
        public_pem = key.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        signing_input = f"{b64(json.dumps({'alg': 'HS256', 'kid': 'k1'}).encode())}.{payload}"
        mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
        token = f"{signing_input}.{b64(mac)}"
    elif tamper == "unknown-kid":
        token = signed(claims, keys["k2"])  # never published
    else:
        token = signed(claims, key)
    assert_refused(finish(client, idp, request, token), expected)


def test_a_new_signing_key_is_fetched_once_and_accepted(client, idp, keys, key_set_clock):
    assert sign_in(client, idp, keys["k1"]).status_code == 302
    publish(idp, keys["k1"], keys["k2"])  # the IdP rolls its keys
    client.logout()
    jwks_fetches = sum(r.path == "/jwks" for r in idp.requests)
    # Within BROKER_JWKS_REFETCH_SECONDS of the last fetch an unknown kid fetches nothing.
    refused = sign_in(client, idp, keys["k2"])
    assert refused.status_code == 400 and "could not be verified" in refused.content.decode()
    assert "_auth_user_id" not in refused.wsgi_request.session
    assert sum(r.path == "/jwks" for r in idp.requests) == jwks_fetches
    key_set_clock.pass_refetch_interval()
    assert sign_in(client, idp, keys["k2"]).status_code == 302
    assert sum(r.path == "/jwks" for r in idp.requests) == jwks_fetches + 1


def test_a_wrong_iss_on_the_callback_is_refused_before_the_code_is_used(client, idp, keys):
    request = start(client)
    token = signed(claims_for(idp, request["nonce"]), keys["k1"])
    assert_refused(finish(client, idp, request, token, iss="https://evil.example"), "RFC 9207")
    assert not any(r.path == "/token" for r in idp.requests)


def test_a_token_answer_without_an_id_token_is_refused(client, idp):
    request = start(client)
    idp.bodies.append(json.dumps({"access_token": "at", "token_type": "Bearer"}).encode())
    response = client.get("/accounts/oidc/callback", {"code": "c", "state": request["state"]})
    assert_refused(response, "without an ID token")


def test_a_discovery_document_for_another_issuer_is_refused(client, idp):
    metadata = json.loads(idp.documents["/.well-known/openid-configuration"])
    metadata["issuer"] = "https://evil.example"
    idp.documents["/.well-known/openid-configuration"] = json.dumps(metadata).encode()
    response = client.get("/accounts/oidc/login")
    assert response.status_code == 502 and "another issuer" in response.content.decode()
    assert not any(r.path == "/token" for r in idp.requests)


def test_a_replayed_state_is_refused(client, idp, keys):
    request = start(client)
    token = signed(claims_for(idp, request["nonce"]), keys["k1"])
    assert finish(client, idp, request, token).status_code == 302
    client.logout()
    User.objects.all().delete()
    Group.objects.exclude(name=AUDITOR_GROUP).delete()
    assert_refused(finish(client, idp, request, token), "could not be verified")


def test_a_username_taken_by_a_local_user_is_refused_not_merged(client, idp, keys):
    local = User.objects.create_user("alice.sso", password="local-password")
    response = sign_in(client, idp, keys["k1"])
    assert response.status_code == 400 and "already exists" in response.content.decode()
    assert not ExternalIdentity.objects.exists()
    assert list(User.objects.all()) == [local] and not local.groups.exists()
    assert "_auth_user_id" not in client.session


def test_the_username_falls_back_to_email(client, idp, keys):
    assert sign_in(client, idp, keys["k1"], preferred_username=None).status_code == 302
    assert User.objects.get().username == "alice@corp.example"


def test_without_a_groups_claim_setting_rights_set_in_the_admin_are_kept(
    client, idp, keys, settings
):
    settings.BROKER_OIDC_GROUPS_CLAIM = ""
    assert sign_in(client, idp, keys["k1"], groups=None).status_code == 302
    client.logout()
    User.objects.update(is_staff=True, is_superuser=True)  # made an admin in the admin
    assert sign_in(client, idp, keys["k1"], groups=["admins-elsewhere"]).status_code == 302
    user = User.objects.get()
    assert user.is_superuser and not user.groups.exists()


def test_only_the_auditor_groups_make_an_auditor_not_an_idp_group_named_auditor(client, idp, keys):
    assert sign_in(client, idp, keys["k1"], groups=["auditor"]).status_code == 302
    user = User.objects.get()
    assert not user.is_staff and not user.groups.exists()
    client.logout()
    assert sign_in(client, idp, keys["k1"], groups=["auditors"]).status_code == 302
    user.refresh_from_db()
    assert user.is_staff and not user.is_superuser
    assert sorted(user.groups.values_list("name", flat=True)) == ["auditor", "auditors"]


def test_entra_groups_overage_is_refused_with_what_to_configure(client, idp, keys):
    overage = {"groups": "src1"}
    response = sign_in(client, idp, keys["k1"], groups=None, _claim_names=overage)
    assert_refused(response, "Groups assigned to the application")


def test_a_deactivated_user_cannot_sign_in(client, idp, keys):
    assert sign_in(client, idp, keys["k1"], groups=["admins"]).status_code == 302
    client.logout()
    User.objects.update(is_active=False)
    response = sign_in(client, idp, keys["k1"], groups=["engineering"])
    assert response.status_code == 400 and "deactivated" in response.content.decode()
    user = User.objects.get()
    assert user.is_superuser and list(user.groups.values_list("name", flat=True)) == ["admins"]
    assert "_auth_user_id" not in client.session


def test_an_unreachable_idp_is_a_clear_page_not_a_500(client, idp, settings):
    idp.documents.clear()
    settings.BROKER_OIDC_ISSUER = f"{idp.url}/gone"
    response = client.get("/accounts/oidc/login")
    assert response.status_code == 502 and "could not reach" in response.content.decode()


def test_sign_out_ends_the_session_at_the_idp_too(client, idp, keys, settings):
    request = start(client)
    token = signed(claims_for(idp, request["nonce"]), keys["k1"])
    finish(client, idp, request, token)
    response = client.post("/accounts/logout/")
    location = urlsplit(response["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == f"{idp.url}/logout"
    query = parse_qs(location.query)
    # The broker keeps no ID token to hint with (issue 25 item 5): it names its client.
    assert "id_token_hint" not in query and token not in response["Location"]
    assert query["client_id"] == [settings.BROKER_OIDC_CLIENT_ID]
    assert query["post_logout_redirect_uri"] == ["http://localhost:8000/accounts/login/"]
    assert "_auth_user_id" not in client.session


def test_a_password_sign_out_does_not_send_the_person_to_the_idp(client, idp, django_user_model):
    django_user_model.objects.create_user("root", password="root-password")
    assert client.login(username="root", password="root-password")
    response = client.post("/accounts/logout/")
    assert response["Location"] == "/accounts/login/"


def test_an_admin_sees_who_a_user_is_at_the_idp(client, idp, keys):
    assert sign_in(client, idp, keys["k1"], groups=["admins"]).status_code == 302
    page = client.get(f"/admin/accounts/user/{User.objects.get().pk}/change/")
    assert page.status_code == 200
    assert "00u-alice" in page.content.decode() and idp.url in page.content.decode()


@pytest.mark.parametrize("endpoint", ["discovery", "token", "jwks"])
def test_an_idp_answering_too_slowly_is_cut_off_at_the_deadline(
    client, idp, keys, settings, endpoint
):
    """Discovery, the code exchange and the JWKS go through the broker's outbound HTTP
    client: each exchange ends within BROKER_PROVIDER_TIMEOUT however slowly the IdP
    trickles its answer (one byte per half second: no single read would time out)."""
    settings.BROKER_PROVIDER_TIMEOUT = 1.5
    slow = start_trickling_server(0.5)
    try:
        if endpoint == "discovery":
            settings.BROKER_OIDC_ISSUER = slow.url
        else:
            document = json.loads(idp.documents["/.well-known/openid-configuration"])
            document["token_endpoint" if endpoint == "token" else "jwks_uri"] = f"{slow.url}/x"
            idp.documents["/.well-known/openid-configuration"] = json.dumps(document).encode()
        started = time.monotonic()
        if endpoint == "discovery":
            response = client.get("/accounts/oidc/login")
        else:
            response = sign_in(client, idp, keys["k1"])
        elapsed = time.monotonic() - started
    finally:
        slow.stop()
    # The login view answers 502; the callback answers every refusal with 400.
    assert response.status_code == (502 if endpoint == "discovery" else 400)
    assert "could not reach the sign-in service" in response.content.decode()
    assert "DeadlineExceeded" in response.content.decode()
    assert 1.4 <= elapsed <= 1.5 + 1.5  # the deadline, and slack for a busy machine
    assert len(slow.requests) == 1
    assert not User.objects.exists()


# The bounded parser (broker.infra.bounded_json) reads the IdP's documents and ID tokens:
# 1,500 nested arrays (Python's parser recursed on them until RecursionError, a 500) in the
# discovery document, the token answer or a correctly signed ID token end on a clear page.
DEEP_JSON = "[" * 1500 + "]" * 1500


def test_a_deeply_nested_discovery_document_is_a_clear_page(client, idp):
    idp.documents["/.well-known/openid-configuration"] = (
        '{"issuer": "' + idp.url + '", "x": ' + DEEP_JSON + "}"
    ).encode()
    response = client.get("/accounts/oidc/login")
    assert response.status_code == 502, response.content[:300]
    assert "could not reach" in response.content.decode()


def test_a_deeply_nested_token_answer_is_refused_with_nothing_created(client, idp):
    request = start(client)
    idp.bodies.append(DEEP_JSON.encode())
    response = client.get("/accounts/oidc/callback", {"code": "c", "state": request["state"]})
    assert_refused(response, "could not be verified")


def test_a_signed_but_deeply_nested_id_token_is_refused_with_nothing_created(client, idp, keys):
    request = start(client)
    claims = json.dumps(claims_for(idp, request["nonce"]))[:-1] + ', "x": ' + DEEP_JSON + "}"
    id_token = jws.serialize_compact(
        {"alg": "RS256", "kid": keys["k1"].kid}, claims.encode(), keys["k1"]
    )
    assert_refused(finish(client, idp, request, id_token), "could not be verified")
