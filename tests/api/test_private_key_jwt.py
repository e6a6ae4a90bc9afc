"""private_key_jwt (RFC 7523) at the token endpoint, as Azure AD clients send it, and the
attacks it must withstand."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from django.core.management import call_command
from joserfc import jwt
from joserfc.jwk import JWKRegistry

from broker.models import ServiceClient, ServiceKey
from broker.service_identity import service_keys, tokens
from tests.api.conftest import audit_events, post_form

pytestmark = pytest.mark.django_db

AUDIENCE = "http://localhost:8000/api/v1/oauth/token"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(private: Any) -> str:
    return (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def private_pem(private: Any) -> str:
    return private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def certificate(private: Any, days: int = 30) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "reporting service")])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=days))
        .sign(private, hashes.SHA256())
    )


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def x5t_s256(cert: x509.Certificate) -> str:
    return b64url(hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest())


def claims_for(client_id: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": AUDIENCE,
        "jti": secrets.token_hex(16),
        "iat": now,
        "nbf": now,
        "exp": now + 240,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def assertion(private: Any, header: dict[str, Any], claims: dict[str, Any], alg: str) -> str:
    if isinstance(private, rsa.RSAPrivateKey):
        kty = "RSA"
    elif isinstance(private, ec.EllipticCurvePrivateKey):
        kty = "EC"
    else:
        kty = "OKP"
    key = JWKRegistry.import_key(private_pem(private), kty)
    return jwt.encode({"alg": alg, **header}, claims, key, algorithms=[alg])


def request_token(api, client_assertion: str, **extra: str):
    return post_form(
        api,
        {
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": client_assertion,
            **extra,
        },
    )


@pytest.fixture
def key_client(tmp_path) -> tuple[ServiceClient, Any, str]:
    """A service registered with createserviceclient --public-key, as an operator would."""
    private = rsa_key()
    path = tmp_path / "public.pem"
    path.write_text(public_pem(private))
    from io import StringIO

    out = StringIO()
    call_command(
        "createserviceclient", "Reporting", "--public-key", str(path), "--json", stdout=out
    )
    result = json.loads(out.getvalue())
    assert "client_secret" not in result
    return ServiceClient.objects.get(client_id=result["client_id"]), private, result["kid"]


@pytest.fixture
def cert_client(tmp_path) -> tuple[ServiceClient, Any, x509.Certificate]:
    private = rsa_key()
    cert = certificate(private)
    path = tmp_path / "cert.pem"
    path.write_text(cert_pem(cert))
    from io import StringIO

    out = StringIO()
    call_command("createserviceclient", "Billing", "--certificate", str(path), "--json", stdout=out)
    result = json.loads(out.getvalue())
    assert result["x5t_s256"] == x5t_s256(cert)
    return ServiceClient.objects.get(client_id=result["client_id"]), private, cert


def test_the_kid_is_the_rfc7638_thumbprint(key_client):
    service, private, kid = key_client
    expected = JWKRegistry.import_key(public_pem(private), "RSA").thumbprint()
    assert kid == expected == ServiceKey.objects.get(service=service).kid


@pytest.mark.parametrize("alg", ["RS256", "PS256"])
def test_it_accepts_an_rsa_assertion_named_by_kid(api, key_client, alg):
    service, private, kid = key_client
    response = request_token(
        api, assertion(private, {"kid": kid}, claims_for(service.client_id), alg)
    )
    assert response.status_code == 200, response.content
    assert tokens.parse(response.json()["access_token"]).client_id == service.client_id
    [event] = audit_events(action="service.authenticated", service=service.client_id)
    assert event.detail["method"] == "private_key_jwt"


def test_it_accepts_an_azure_style_certificate_assertion(api, cert_client):
    """Header alg PS256, typ JWT, x5t#S256; claims as MSAL sends them."""
    service, private, cert = cert_client
    token = assertion(
        private, {"typ": "JWT", "x5t#S256": x5t_s256(cert)}, claims_for(service.client_id), "PS256"
    )
    response = request_token(api, token, client_id=service.client_id)
    assert response.status_code == 200, response.content


@pytest.mark.parametrize("kind", ["ec", "ed25519"])
def test_it_accepts_es256_and_eddsa_keys(api, kind):
    private = (
        ec.generate_private_key(ec.SECP256R1())
        if kind == "ec"
        else ed25519.Ed25519PrivateKey.generate()
    )
    service = ServiceClient.objects.create(client_id=f"svc-{kind}", name=kind)
    key = service_keys.register_key(service, public_key=public_pem(private))
    alg = "ES256" if kind == "ec" else "EdDSA"
    response = request_token(
        api, assertion(private, {"kid": key.kid}, claims_for(service.client_id), alg)
    )
    assert response.status_code == 200, response.content


def test_it_accepts_a_public_jwk(api):
    private = rsa_key()
    jwk = JWKRegistry.import_key(public_pem(private), "RSA").as_dict(private=False)
    service = ServiceClient.objects.create(client_id="svc-jwk", name="jwk")
    key = service_keys.register_key(service, public_key=json.dumps(jwk))
    response = request_token(
        api, assertion(private, {"kid": key.kid}, claims_for("svc-jwk"), "RS256")
    )
    assert response.status_code == 200


def test_it_refuses_to_register_private_keys_and_weak_keys():
    service = ServiceClient.objects.create(client_id="svc-x", name="x")
    with pytest.raises(service_keys.ServiceKeyError):
        service_keys.register_key(service, public_key=private_pem(rsa_key()))
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(service_keys.ServiceKeyError):
        service_keys.register_key(service, public_key=public_pem(weak))
    assert not ServiceKey.objects.exists()


def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}."


def _hs256_with_public_key(header: dict[str, Any], claims: dict[str, Any], pem: str) -> str:
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    mac = hmac.new(pem.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


ATTACKS = [
    "alg_none",
    "hs256_with_public_key",
    "wrong_aud",
    "expired",
    "exp_too_far_ahead",
    "missing_exp",
    "iat_in_future",
    "nbf_in_future",
    "unknown_kid",
    "iss_differs_from_sub",
    "signed_by_another_key",
    "disabled_service",
]


@pytest.mark.parametrize("attack", ATTACKS)
def test_it_refuses_forged_or_unfit_assertions(api, key_client, attack):
    service, private, kid = key_client
    cid = service.client_id
    now = int(time.time())
    header: dict[str, Any] = {"kid": kid}
    claims = claims_for(cid)
    if attack == "alg_none":
        token = _unsigned({"alg": "none", "kid": kid}, claims)
    elif attack == "hs256_with_public_key":
        token = _hs256_with_public_key(
            {"alg": "HS256", "kid": kid, "typ": "JWT"},
            claims,
            ServiceKey.objects.get(service=service).public_key_pem,
        )
    else:
        signer = rsa_key() if attack == "signed_by_another_key" else private
        if attack == "wrong_aud":
            claims["aud"] = "https://login.example/token"
        elif attack == "expired":
            claims.update(exp=now - 120, iat=now - 400, nbf=now - 400)
        elif attack == "exp_too_far_ahead":
            claims["exp"] = now + 3600
        elif attack == "missing_exp":
            del claims["exp"]
        elif attack == "iat_in_future":
            claims["iat"] = now + 600
        elif attack == "nbf_in_future":
            claims["nbf"] = now + 600
        elif attack == "unknown_kid":
            header["kid"] = "not-a-registered-thumbprint"
        elif attack == "iss_differs_from_sub":
            claims["sub"] = "someone-else"
        elif attack == "disabled_service":
            tokens.disable_service(service)
        token = assertion(signer, header, claims, "RS256")
    response = request_token(api, token)
    assert response.status_code == 401, (attack, response.content)
    assert response.json()["error"] == "invalid_client"
    assert "access_token" not in response.json()
    [event] = audit_events(action="service.auth_failed")
    assert event.outcome == "denied" and event.detail["reason"]
    assert not audit_events(action="service.authenticated")


def test_a_jti_is_accepted_only_once(api, key_client):
    service, private, kid = key_client
    token = assertion(private, {"kid": kid}, claims_for(service.client_id), "RS256")
    assert request_token(api, token).status_code == 200
    replay = request_token(api, token)
    assert replay.status_code == 401
    [event] = audit_events(action="service.auth_failed")
    assert "replay" in event.detail["reason"]


def test_a_certificate_that_does_not_match_the_signature_is_refused(api, cert_client):
    """The header names the registered certificate, but another key signed the assertion."""
    service, _, cert = cert_client
    impostor = rsa_key()
    token = assertion(
        impostor, {"x5t#S256": x5t_s256(cert)}, claims_for(service.client_id), "PS256"
    )
    assert request_token(api, token).status_code == 401
    # And a certificate nobody registered, even with its own key, is unknown.
    other_cert = certificate(impostor)
    token = assertion(
        impostor, {"x5t#S256": x5t_s256(other_cert)}, claims_for(service.client_id), "PS256"
    )
    assert request_token(api, token).status_code == 401
    assert len(audit_events(action="service.auth_failed")) == 2


def test_a_key_of_another_service_does_not_authenticate(api, key_client):
    service, _, _ = key_client
    other_private = rsa_key()
    other = ServiceClient.objects.create(client_id="svc-other", name="other")
    other_key = service_keys.register_key(other, public_key=public_pem(other_private))
    token = assertion(other_private, {"kid": other_key.kid}, claims_for(service.client_id), "RS256")
    assert request_token(api, token).status_code == 401


def test_addservicekey_registers_a_second_key_for_rollover(api, key_client, tmp_path):
    service, _, _ = key_client
    new_private = rsa_key()
    path = tmp_path / "new.pem"
    path.write_text(cert_pem(certificate(new_private)))
    from io import StringIO

    out = StringIO()
    call_command(
        "addservicekey", service.client_id, "--certificate", str(path), "--json", stdout=out
    )
    kid = json.loads(out.getvalue())["kid"]
    token = assertion(new_private, {"kid": kid}, claims_for(service.client_id), "RS256")
    assert request_token(api, token).status_code == 200
    assert ServiceKey.objects.filter(service=service).count() == 2
