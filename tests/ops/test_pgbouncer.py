"""PostgreSQL behind PgBouncer in transaction pooling (BROKER_DB_BEHIND_PGBOUNCER=1): each
transaction may run on another server connection, so nothing may outlive one (no
server-side cursor, no prepared statement, no session setting). Tokens, a refresh and the
audit export run through a real pgbouncer whose server connections are handed out in turn."""

from __future__ import annotations

import threading

import pytest
import requests
from django.conf import settings
from django.db import connection

from broker.models import AuditEvent
from tests.gunicorn_server import broker_token, gunicorn, service_for
from tests.pgbouncer_server import installed, pgbouncer, transactions_served
from tests.processes import python_output
from tests.sandbox_grants import connect_grant, digest, refresh_count, subprocess_env

pytestmark = [
    pytest.mark.skipif(
        settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql",
        reason="PgBouncer pools PostgreSQL connections",
    ),
    pytest.mark.skipif(
        not installed(), reason="pgbouncer is not installed (apt-get install pgbouncer)"
    ),
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow,
]

TIMEOUT = 30


@pytest.fixture
def bouncer(tmp_path):
    """(DATABASE_URL through pgbouncer to the test database, pgbouncer's port)."""
    params = connection.settings_dict
    with pgbouncer(
        tmp_path / "pgbouncer.log",
        server_host=params["HOST"] or "127.0.0.1",
        server_port=int(params["PORT"] or 5432),
    ) as port:
        yield f"postgres://{params['USER']}@127.0.0.1:{port}/{params['NAME']}", port


def test_tokens_and_a_refresh_are_served_through_pgbouncer(
    sandbox, sandbox_apps, owner, bouncer, tmp_path
):
    database_url, port = bouncer
    app = sandbox_apps["sandbox"]
    grant = connect_grant(sandbox, owner)
    client_id, secret = service_for(app, "pgb")
    before_refreshes = refresh_count(sandbox)
    env = {"DATABASE_URL": database_url, "BROKER_DB_BEHIND_PGBOUNCER": "1"}
    with gunicorn(tmp_path / "gunicorn.log", **env) as url:
        headers = {"Authorization": f"Bearer {broker_token(url, client_id, secret)}"}

        def fetch(**extra: object) -> requests.Response:
            return requests.post(
                f"{url}/api/v1/access-token",
                json={"grant": str(grant.pk), "min_ttl": 1, **extra},
                headers=headers,
                timeout=TIMEOUT,
            )

        answers: list[requests.Response] = []
        callers = [
            threading.Thread(target=lambda: answers.extend(fetch() for _ in range(5)))
            for _ in range(4)
        ]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(TIMEOUT)
        refreshed = fetch(force_refresh=True)
        after = fetch()

    assert [a.status_code for a in answers] == [200] * 20, [a.text for a in answers]
    assert refreshed.status_code == 200, refreshed.text
    # The sandbox's tokens live 2 s, so the fetches may have refreshed too; it kills the
    # grant's tokens on a refresh token sent twice, so an active grant proves none was.
    assert refresh_count(sandbox) >= before_refreshes + 1
    old = {digest(a.json()["access_token"]) for a in answers}
    new = digest(refreshed.json()["access_token"])
    assert new not in old
    assert digest(after.json()["access_token"]) == new
    grant.refresh_from_db()
    assert grant.status == "active"
    assert digest(grant.unseal("access_token")) == new
    assert AuditEvent.objects.filter(action="token.issued", grant_id=grant.pk).count() == 22
    # The broker's queries went through pgbouncer, not around it.
    assert transactions_served("127.0.0.1", port, connection.settings_dict["NAME"]) > 22


EXPORT = """
import django
django.setup()
from broker.admin.model_admins import audit_csv_rows
from broker.models import AuditEvent
print(sum(1 for _ in audit_csv_rows(AuditEvent.objects.all())))
"""


def test_the_audit_export_reads_past_its_first_chunk_through_pgbouncer(bouncer):
    """The export reads in chunks of 2,000 (QuerySet.iterator): with a server-side cursor,
    the next chunk's FETCH runs on another server connection, where the cursor is unknown."""
    database_url, _ = bouncer
    AuditEvent.objects.bulk_create(
        AuditEvent(actor_type="system", action="test.event") for _ in range(4500)
    )
    env = subprocess_env(DATABASE_URL=database_url, BROKER_DB_BEHIND_PGBOUNCER="1")
    exported = python_output(EXPORT, env, timeout=120)
    assert int(exported) == 4501  # the header, every event
