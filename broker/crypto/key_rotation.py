"""Moving every ciphertext to the primary key of the key ring (see `manage.py reencrypt`)."""

from __future__ import annotations

from typing import Any

from django.apps import apps

from broker.crypto.sealed_fields import SealedFieldsModel, keyring


def sealed_models() -> list[type[SealedFieldsModel]]:
    return [
        model
        for model in apps.get_models()
        if issubclass(model, SealedFieldsModel) and model.SEALED_FIELDS
    ]


def reencrypt_all(batch_size: int = 500) -> dict[str, Any]:
    """Walks each table in primary-key batches. Each row is rewritten with a conditional
    update on the old ciphertext, so a concurrent writer (a refresh storing new tokens)
    always wins and nothing it wrote is replaced by an older value. Rows already under the
    primary key are skipped, which makes an interrupted run resumable."""
    ring = keyring()
    report: dict[str, Any] = {"primary_kid": ring.primary_kid, "tables": {}}
    for model in sealed_models():
        columns = [model.sealed_column_name(f) for f in model.SEALED_FIELDS]
        counts = {"reencrypted": 0, "current": 0, "raced": 0}
        last_pk = None
        while True:
            rows = model._default_manager.order_by("pk").only("pk", *columns)
            if last_pk is not None:
                rows = rows.filter(pk__gt=last_pk)
            batch = list(rows[:batch_size])
            if not batch:
                break
            for row in batch:
                for field, column in zip(model.SEALED_FIELDS, columns, strict=True):
                    old = getattr(row, column)
                    if not old:
                        continue
                    if ring.key_id_of(old) == ring.primary_kid:
                        counts["current"] += 1
                        continue
                    row.seal(field, row.unseal(field))
                    updated = model._default_manager.filter(pk=row.pk, **{column: old}).update(
                        **{column: getattr(row, column)}
                    )
                    counts["reencrypted" if updated else "raced"] += 1
            last_pk = batch[-1].pk
        report["tables"][model._meta.db_table] = counts
    return report
