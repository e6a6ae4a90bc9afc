"""A copy of the database alone reveals no token: checked on the raw file or a real dump."""

import shutil
import subprocess

import pytest
from django.db import connection

from broker.models import Grant, ProviderApp

KNOWN_TOKEN = "at-rest-known-token-4f0c2f"


@pytest.mark.django_db(transaction=True)
def test_the_database_dump_does_not_contain_a_stored_token(owner, tmp_path):
    app = ProviderApp.objects.create(slug="acme", kind="atlassian", name="Acme", client_id="c")
    grant = Grant(user=owner, provider_app=app, external_account_id="a")
    grant.seal("access_token", KNOWN_TOKEN)
    grant.seal("refresh_token", KNOWN_TOKEN + "-refresh")
    grant.save()

    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA wal_checkpoint(FULL)")
        name = connection.settings_dict["NAME"]
        dump = b"".join(
            open(path, "rb").read()
            for path in (name, f"{name}-wal")
            if shutil.os.path.exists(path)  # type: ignore[attr-defined]
        )
    elif connection.vendor == "postgresql":
        params = connection.get_connection_params()
        dump = subprocess.run(
            [
                "pg_dump",
                "-h",
                params.get("host") or "127.0.0.1",
                "-p",
                str(params.get("port") or 5432),
                "-U",
                params.get("user") or "postgres",
                params["dbname"],
            ],
            check=True,
            capture_output=True,
        ).stdout
    else:
        pytest.skip(f"no dump method for {connection.vendor}")
    assert b"acme" in dump  # the dump really holds the data
    assert KNOWN_TOKEN.encode() not in dump
