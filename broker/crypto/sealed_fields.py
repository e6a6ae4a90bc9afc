"""Model columns that only ever hold ciphertext.

A model lists its secrets in SEALED_FIELDS; each secret NAME is stored in a column
`NAME_sealed` and is reached only through `seal()` and `unseal()`. There is no plaintext
attribute to assign, so a token cannot be saved unencrypted by accident. The associated
data binds each ciphertext to table, primary key and field (see broker.crypto.key_ring).
"""

from __future__ import annotations

from typing import ClassVar

from django.conf import settings
from django.db import models

from broker.crypto.key_ring import KeyRing


def sealed_column() -> models.TextField:
    return models.TextField(blank=True, default="", editable=False)


def keyring() -> KeyRing:
    ring: KeyRing = settings.ENCRYPTION_KEYRING
    return ring


class SealedFieldsModel(models.Model):
    """Abstract base for rows holding secrets. The primary key must exist before sealing."""

    SEALED_FIELDS: ClassVar[tuple[str, ...]] = ()

    class Meta:
        abstract = True

    @classmethod
    def sealed_column_name(cls, field: str) -> str:
        if field not in cls.SEALED_FIELDS:
            raise KeyError(f"{cls.__name__} has no sealed field {field!r}")
        return f"{field}_sealed"

    def associated_data(self, field: str) -> str:
        if self.pk is None:
            raise ValueError("a sealed field needs the row's primary key; set it first")
        return f"{self._meta.db_table}:{self.pk}:{field}"

    def seal(self, field: str, plaintext: str | None) -> None:
        """Stores `plaintext` encrypted under the primary key; None or "" clears the field."""
        column = self.sealed_column_name(field)
        value = keyring().encrypt(plaintext, self.associated_data(field)) if plaintext else ""
        setattr(self, column, value)

    def unseal(self, field: str) -> str | None:
        ciphertext = getattr(self, self.sealed_column_name(field))
        if not ciphertext:
            return None
        return keyring().decrypt(ciphertext, self.associated_data(field))

    def has_secret(self, field: str) -> bool:
        return bool(getattr(self, self.sealed_column_name(field)))

    def wipe_secrets(self) -> list[str]:
        """Clears every sealed column; returns the column names for `save(update_fields=...)`."""
        columns = [self.sealed_column_name(f) for f in self.SEALED_FIELDS]
        for column in columns:
            setattr(self, column, "")
        return columns
