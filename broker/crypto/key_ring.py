"""Encryption at rest: AES-256-GCM under a key ring, each ciphertext bound to its place.

A ciphertext reads `v1:<kid>:<base64url(nonce || ciphertext+tag)>`. The associated data
names the table, row and field it was written for, so a ciphertext copied into another row
or column fails to authenticate instead of decrypting to someone else's token.
The key ring comes from BROKER_ENCRYPTION_KEYS: `kid:base64key,kid:base64key`; the first
key encrypts, every key decrypts (so keys can be rotated while the site runs).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

FORMAT_VERSION = "v1"
NONCE_BYTES = 12
KEY_BYTES = 32
KID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


class KeyRingError(ValueError):
    """The key ring setting is malformed."""


class DecryptionError(Exception):
    """A ciphertext cannot be decrypted; the message says why, never what it held."""


@dataclass(frozen=True)
class KeyRing:
    primary_kid: str
    keys: dict[str, bytes]

    @classmethod
    def parse(cls, text: str) -> KeyRing:
        keys: dict[str, bytes] = {}
        order: list[str] = []
        for entry in (part.strip() for part in text.split(",")):
            if not entry:
                continue
            kid, sep, encoded = entry.partition(":")
            if not sep or not KID_PATTERN.match(kid):
                raise KeyRingError(
                    "each entry must be kid:base64key with a kid of letters, digits, - or _"
                )
            try:
                key = base64.b64decode(encoded, validate=True)
            except binascii.Error:
                raise KeyRingError(f"key {kid!r} is not valid base64") from None
            if len(key) != KEY_BYTES:
                raise KeyRingError(f"key {kid!r} must be {KEY_BYTES} bytes, not {len(key)}")
            if kid in keys:
                raise KeyRingError(f"key id {kid!r} appears twice")
            keys[kid] = key
            order.append(kid)
        if not order:
            raise KeyRingError("no keys given (generate one with `manage.py generatekey`)")
        return cls(primary_kid=order[0], keys=keys)

    @staticmethod
    def generate_entry(kid: str) -> str:
        """A new `kid:base64key` entry made of 32 random bytes."""
        return f"{kid}:{base64.b64encode(os.urandom(KEY_BYTES)).decode()}"

    def encrypt(self, plaintext: str, associated_data: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(self.keys[self.primary_kid]).encrypt(
            nonce, plaintext.encode(), associated_data.encode()
        )
        body = base64.urlsafe_b64encode(nonce + sealed).decode()
        return f"{FORMAT_VERSION}:{self.primary_kid}:{body}"

    def decrypt(self, ciphertext: str, associated_data: str) -> str:
        kid = self.key_id_of(ciphertext)
        if kid not in self.keys:
            raise DecryptionError(f"ciphertext uses unknown key id {kid!r}")
        try:
            raw = base64.urlsafe_b64decode(ciphertext.split(":", 2)[2])
        except (binascii.Error, ValueError):
            raise DecryptionError("ciphertext is not valid base64") from None
        if len(raw) <= NONCE_BYTES:
            raise DecryptionError("ciphertext is truncated")
        try:
            plain = AESGCM(self.keys[kid]).decrypt(
                raw[:NONCE_BYTES], raw[NONCE_BYTES:], associated_data.encode()
            )
        except InvalidTag:
            raise DecryptionError(
                "ciphertext does not authenticate: altered, not written for this row and field,"
                f" or sealed under another key named {kid!r} (BROKER_ENCRYPTION_KEYS)"
            ) from None
        return plain.decode()

    @staticmethod
    def key_id_of(ciphertext: str) -> str:
        version, sep, rest = ciphertext.partition(":")
        kid, sep2, _ = rest.partition(":")
        if version != FORMAT_VERSION or not sep or not sep2:
            raise DecryptionError("not a broker ciphertext (unknown format)")
        return kid
