"""The key rotation runbook of docs/operations.md, end to end: generatekey, two-key ring,
reencrypt, old key removed, every secret still readable."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command
from django.test import override_settings

from broker.crypto.key_ring import DecryptionError, KeyRing
from broker.crypto.key_rotation import sealed_models
from broker.models import Grant, PendingAuthorization, ProviderApp, ServiceClient
from tests.factories import make_app, make_service, save_grant

OLD = "test1:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="


def every_secret() -> dict[tuple[str, str, str], str | None]:
    values = {}
    for model in sealed_models():
        for row in model._default_manager.all():
            for field in model.SEALED_FIELDS:
                if row.has_secret(field):
                    values[(model.__name__, str(row.pk), field)] = row.unseal(field)
    return values


def key_ids() -> set[str]:
    kids = set()
    for model in sealed_models():
        columns = [model.sealed_column_name(f) for f in model.SEALED_FIELDS]
        for row in model._default_manager.values_list(*columns):
            kids.update(KeyRing.key_id_of(v) for v in row if v)
    return kids


@pytest.mark.django_db
def test_the_rotation_runbook_keeps_every_secret_readable(owner):
    with override_settings(ENCRYPTION_KEYRING=KeyRing.parse(OLD)):
        app = make_app(secret="app-secret-rot")
        app.seal("private_key", "pem-rot")
        app.save()
        save_grant(owner, app, 1, access="at-rot-1", refresh="rt-rot-1")
        save_grant(owner, app, 2, access="at-rot-2", refresh="rt-rot-2")
        make_service("svc", webhook_secret="bkw_rot")
        pending = PendingAuthorization(state="s", user=owner, session_digest="d", provider_app=app)
        pending.seal("code_verifier", "verifier-rot")
        pending.save()
        before = every_secret()
        assert len(before) == 8 and key_ids() == {"test1"}

    out = io.StringIO()
    call_command("generatekey", "--kid", "k2026", "--json", stdout=out)
    entry = json.loads(out.getvalue())["entry"]

    # Steps 1-3: the new key first, the old one after it; then re-encrypt everything.
    with override_settings(ENCRYPTION_KEYRING=KeyRing.parse(f"{entry},{OLD}")):
        assert every_secret() == before  # both keys decrypt meanwhile
        report = io.StringIO()
        call_command("reencrypt", "--json", "--batch-size", "1", stdout=report)
        tables = json.loads(report.getvalue())["tables"]
        assert sum(t["reencrypted"] for t in tables.values()) == 8
        assert key_ids() == {"k2026"}
        again = io.StringIO()
        call_command("reencrypt", "--json", stdout=again)  # resumable: a re-run has nothing to do
        assert sum(t["reencrypted"] for t in json.loads(again.getvalue())["tables"].values()) == 0

    # Step 4: the old key removed; every secret is still readable.
    with override_settings(ENCRYPTION_KEYRING=KeyRing.parse(entry)):
        assert every_secret() == before
        assert Grant.objects.get(external_account_id="acct-1").unseal("refresh_token") == "rt-rot-1"
        assert ProviderApp.objects.get().unseal("private_key") == "pem-rot"
        assert ServiceClient.objects.get().unseal("webhook_secret") == "bkw_rot"
    # And the old key alone can no longer read anything.
    with override_settings(ENCRYPTION_KEYRING=KeyRing.parse(OLD)):
        with pytest.raises(DecryptionError):
            Grant.objects.first().unseal("access_token")
