"""RSA-SHA1 for oauthlib's OAuth 1.0a server without PyJWT.

oauthlib (rfc5849.signature) does RSA through PyJWT's ``RSAAlgorithm`` and keeps the
instances in a module-level cache. PyJWT is not a dependency of this project, so we put
an object with the same small interface (``hash_alg``, ``prepare_key``, ``sign``,
``verify``) built on ``cryptography`` into that cache. oauthlib still builds the
signature base string and drives verification.
"""

from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from oauthlib.oauth1.rfc5849 import signature

HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "SHA-1": hashes.SHA1,
    "SHA-256": hashes.SHA256,
    "SHA-512": hashes.SHA512,
}


class CryptographyRSAAlgorithm:
    """RSASSA-PKCS1-v1_5 with one hash (RFC 5849 3.4.3 uses SHA-1)."""

    def __init__(self, hash_alg: type[hashes.HashAlgorithm]) -> None:
        self.hash_alg = hash_alg

    def prepare_key(self, pem: str) -> Any:
        data = pem.encode("utf-8")
        if b"PRIVATE KEY" in data:
            return serialization.load_pem_private_key(data, password=None)
        return serialization.load_pem_public_key(data)

    def sign(self, message: bytes, key: rsa.RSAPrivateKey) -> bytes:
        return key.sign(message, padding.PKCS1v15(), self.hash_alg())

    def verify(self, message: bytes, key: Any, sig: bytes) -> bool:
        if isinstance(key, rsa.RSAPrivateKey):
            key = key.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            return False
        try:
            key.verify(sig, message, padding.PKCS1v15(), self.hash_alg())
        except InvalidSignature:
            return False
        return True


def install() -> None:
    for name, hash_alg in HASHES.items():
        signature._jwt_rsa.setdefault(name, CryptographyRSAAlgorithm(hash_alg))
