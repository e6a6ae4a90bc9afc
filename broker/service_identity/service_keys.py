"""Public keys and X.509 certificates that services sign private_key_jwt assertions with.

A key is named by its RFC 7638 JWK thumbprint (`kid`); a certificate also by its SHA-256
thumbprint (`x5t#S256`, RFC 7515 4.1.8), which is what Azure AD style clients put in the
assertion header. Only public material is ever accepted or stored.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from joserfc.jwk import JWKRegistry, Key, OctKey

from broker.infra import bounded_json
from broker.models import ServiceClient, ServiceKey

MIN_RSA_BITS = 2048


class ServiceKeyError(ValueError):
    """The offered key or certificate is unusable; the message says why."""


@dataclass(frozen=True)
class ParsedKey:
    public_key_pem: str
    kid: str
    certificate_pem: str = ""
    x5t_s256: str = ""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _check_type(key: PublicKeyTypes) -> None:
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ServiceKeyError(f"RSA keys must have at least {MIN_RSA_BITS} bits")
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ServiceKeyError("EC keys must be on P-256 (ES256)")
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise ServiceKeyError("only RSA, EC P-256 and Ed25519 keys are accepted")


def _pem(key: PublicKeyTypes) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def key_type(key: PublicKeyTypes) -> str:
    """The JWK `kty` of a public key (RFC 7518 6.1, RFC 8037 2)."""
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "EC"
    return "OKP"


def public_jwk(public_key_pem: str) -> Key:
    """The registered key as a joserfc key, ready to verify signatures."""
    key = serialization.load_pem_public_key(public_key_pem.encode())
    return JWKRegistry.import_key(public_key_pem, key_type(key))


def thumbprint(public_key_pem: str) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url) of a public key."""
    return public_jwk(public_key_pem).thumbprint()


def parse_public_key(text: str) -> ParsedKey:
    """A PEM public key or a public JWK (JSON)."""
    text = text.strip()
    if "PRIVATE KEY" in text:
        raise ServiceKeyError("this is a private key: register the public key only")
    if text.startswith("{"):
        try:
            jwk = bounded_json.loads(text)
        except ValueError:
            raise ServiceKeyError("not a valid JWK (JSON)") from None
        if not isinstance(jwk, dict) or "d" in jwk or "k" in jwk:
            raise ServiceKeyError("a public JWK (RSA, EC or OKP) is required")
        try:
            imported = JWKRegistry.import_key(jwk)
        except Exception as exc:  # joserfc raises several types for bad JWKs
            raise ServiceKeyError(f"not a usable JWK: {exc}") from None
        if isinstance(imported, OctKey):
            raise ServiceKeyError("a public JWK (RSA, EC or OKP) is required")
        text = imported.as_pem(private=False).decode()
    try:
        key = serialization.load_pem_public_key(text.encode())
    except ValueError:
        raise ServiceKeyError("not a PEM public key") from None
    _check_type(key)
    pem = _pem(key)
    return ParsedKey(public_key_pem=pem, kid=thumbprint(pem))


def parse_certificate(text: str) -> ParsedKey:
    try:
        certificate = x509.load_pem_x509_certificate(text.strip().encode())
    except ValueError:
        raise ServiceKeyError("not a PEM X.509 certificate") from None
    if certificate.not_valid_after_utc <= datetime.now(UTC):
        raise ServiceKeyError("the certificate has expired")
    key = certificate.public_key()
    _check_type(key)
    pem = _pem(key)
    der = certificate.public_bytes(serialization.Encoding.DER)
    return ParsedKey(
        public_key_pem=pem,
        kid=thumbprint(pem),
        certificate_pem=certificate.public_bytes(serialization.Encoding.PEM).decode(),
        x5t_s256=_b64url(hashlib.sha256(der).digest()),
    )


def register_key(
    service: ServiceClient, *, public_key: str | None = None, certificate: str | None = None
) -> ServiceKey:
    """Adds a key (PEM/JWK) or a certificate (PEM) to `service`; exactly one must be given."""
    if (public_key is None) == (certificate is None):
        raise ServiceKeyError("give either a public key or a certificate")
    parsed = parse_certificate(certificate) if certificate else parse_public_key(public_key or "")
    if ServiceKey.objects.filter(service=service, kid=parsed.kid).exists():
        raise ServiceKeyError(f"key {parsed.kid} is already registered for this service")
    return ServiceKey.objects.create(
        service=service,
        kid=parsed.kid,
        x5t_s256=parsed.x5t_s256,
        public_key_pem=parsed.public_key_pem,
        certificate_pem=parsed.certificate_pem,
    )


def certificate_current(key: ServiceKey, now: datetime | None = None) -> bool:
    """True for plain keys, and for certificates inside their validity period."""
    if not key.certificate_pem:
        return True
    certificate = x509.load_pem_x509_certificate(key.certificate_pem.encode())
    moment = now or datetime.now(UTC)
    return certificate.not_valid_before_utc <= moment < certificate.not_valid_after_utc
