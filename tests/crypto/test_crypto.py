"""Encryption at rest: round trips, and every way a ciphertext can be wrong fails loudly."""

import base64

import pytest
from django.conf import settings
from django.test import override_settings

from broker.crypto.key_ring import DecryptionError, KeyRing, KeyRingError
from broker.crypto.key_rotation import reencrypt_all
from broker.models import Grant, ProviderApp

RING = KeyRing.parse(KeyRing.generate_entry("a") + "," + KeyRing.generate_entry("b"))


def test_it_round_trips_under_the_primary_key():
    sealed = RING.encrypt("secret-token", "t:1:f")
    assert RING.key_id_of(sealed) == "a"
    assert "secret-token" not in sealed
    assert RING.decrypt(sealed, "t:1:f") == "secret-token"


def test_it_uses_a_fresh_nonce_each_time():
    assert RING.encrypt("same", "t:1:f") != RING.encrypt("same", "t:1:f")


def test_a_flipped_bit_fails_to_decrypt():
    sealed = RING.encrypt("secret-token", "t:1:f")
    prefix, body = sealed.rsplit(":", 1)
    raw = bytearray(base64.urlsafe_b64decode(body))
    raw[-5] ^= 0x01
    tampered = f"{prefix}:{base64.urlsafe_b64encode(bytes(raw)).decode()}"
    with pytest.raises(DecryptionError, match="does not authenticate"):
        RING.decrypt(tampered, "t:1:f")


@pytest.mark.parametrize("other_place", ["t:2:f", "t:1:g", "u:1:f"])
def test_a_ciphertext_moved_elsewhere_fails(other_place):
    sealed = RING.encrypt("secret-token", "t:1:f")
    with pytest.raises(DecryptionError, match="not written for this row and field"):
        RING.decrypt(sealed, other_place)


def test_an_unknown_key_id_fails_clearly():
    other = KeyRing.parse(KeyRing.generate_entry("zzz"))
    with pytest.raises(DecryptionError, match="unknown key id 'zzz'"):
        RING.decrypt(other.encrypt("x", "t:1:f"), "t:1:f")


def test_another_key_under_the_same_key_id_is_named_as_a_cause():
    """A restore with a ring made anew under the old key id (docs/backups.md): the log must
    point at BROKER_ENCRYPTION_KEYS, not only at tampering."""
    same_id = KeyRing.parse(KeyRing.generate_entry("a"))
    with pytest.raises(DecryptionError, match="another key named 'a' \\(BROKER_ENCRYPTION_KEYS"):
        same_id.decrypt(RING.encrypt("secret-token", "t:1:f"), "t:1:f")


def test_garbage_is_not_a_ciphertext():
    with pytest.raises(DecryptionError, match="unknown format"):
        RING.decrypt("plain-text-token", "t:1:f")


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("", "no keys given"),
        ("nokid", "kid:base64key"),
        ("a:not-base64!", "not valid base64"),
        ("a:" + base64.b64encode(b"short").decode(), "must be 32 bytes"),
        (KeyRing.generate_entry("a") + "," + KeyRing.generate_entry("a"), "appears twice"),
    ],
)
def test_a_malformed_key_ring_is_rejected(setting, message):
    with pytest.raises(KeyRingError, match=message):
        KeyRing.parse(setting)


@pytest.fixture
def app(db):
    app = ProviderApp(slug="acme", kind="atlassian", name="Acme", client_id="cid")
    app.seal("client_secret", "client-secret-value")
    app.save()
    return app


@pytest.fixture
def grant(app, owner):
    grant = Grant(user=owner, provider_app=app, external_account_id="acc-1")
    grant.seal("access_token", "access-token-value")
    grant.seal("refresh_token", "refresh-token-value")
    grant.save()
    return grant


def test_a_model_stores_only_ciphertext(grant):
    stored = Grant.objects.values("access_token_sealed", "refresh_token_sealed").get(pk=grant.pk)
    assert stored["access_token_sealed"].startswith("v1:test2:")
    assert "access-token-value" not in str(stored)
    assert Grant.objects.get(pk=grant.pk).unseal("refresh_token") == "refresh-token-value"


def test_a_ciphertext_copied_to_another_row_or_field_fails(grant, app, owner):
    other = Grant(user=owner, provider_app=app, external_account_id="acc-2")
    other.access_token_sealed = grant.access_token_sealed
    other.refresh_token_sealed = grant.access_token_sealed
    other.save()
    other.refresh_from_db()
    with pytest.raises(DecryptionError):
        other.unseal("access_token")
    grant.refresh_token_sealed = grant.access_token_sealed
    with pytest.raises(DecryptionError):
        grant.unseal("refresh_token")


def test_reencrypt_moves_everything_to_the_new_primary_key(grant, app):
    old_ring = KeyRing.parse(KeyRing.generate_entry("old"))
    with override_settings(ENCRYPTION_KEYRING=old_ring):
        grant.seal("access_token", "written-under-old-key")
        grant.save()
    new_entry = KeyRing.generate_entry("new")
    current = settings.ENCRYPTION_KEYRING.keys | old_ring.keys
    both = KeyRing.parse(
        ",".join(
            [new_entry] + [f"{kid}:{base64.b64encode(k).decode()}" for kid, k in current.items()]
        )
    )
    with override_settings(ENCRYPTION_KEYRING=both):
        report = reencrypt_all(batch_size=1)
        assert report["tables"]["broker_grant"]["reencrypted"] == 2  # access + refresh
        again = reencrypt_all()
        assert again["tables"]["broker_grant"]["reencrypted"] == 0
    grant.refresh_from_db()
    assert grant.access_token_sealed.startswith("v1:new:")
    # The old key can now be removed: the new key alone reads every secret.
    with override_settings(ENCRYPTION_KEYRING=KeyRing.parse(new_entry)):
        assert grant.unseal("access_token") == "written-under-old-key"
        # Secrets sealed under the test ring ("test2") were re-encrypted too.
        app.refresh_from_db()
        assert app.unseal("client_secret") == "client-secret-value"
