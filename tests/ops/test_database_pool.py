"""Bounded database connections (PostgreSQL's pool): many threads share a few connections,
callers waiting on a refresh hold none, and a request that cannot get one is told 503 +
Retry-After (JSON on the API, a page in the browser), never 500. Run under gunicorn with
gunicorn.conf.py, as deployed, against the sandbox provider."""

from __future__ import annotations

import contextlib
import secrets
import socket
import threading
import time

import psycopg
import pytest
import requests
from django.conf import settings
from django.db import OperationalError, connections
from django.utils import timezone

from broker.models import ServiceClient
from broker.ops.database_busy import is_database_busy
from broker.service_identity import service_secrets
from tests.gunicorn_server import broker_token, gunicorn, service_for, token_request
from tests.sandbox_grants import connect_grant, database_url, digest, refresh_count

pytestmark = [
    pytest.mark.skipif(
        settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql",
        reason="the connection pool is PostgreSQL's (psycopg_pool); SQLite has none",
    ),
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow,
]

TIMEOUT = 30


def test_more_waiters_than_connections_all_get_the_one_refreshed_token(
    sandbox, sandbox_apps, owner, tmp_path
):
    """Ten callers, a pool of two: nine wait for the slow refresh holding no connection."""
    grant = connect_grant(sandbox, owner)
    client_id, secret = service_for(sandbox_apps["sandbox"], "pool")
    pool = {
        "WEB_CONCURRENCY": "1",
        "GUNICORN_THREADS": "12",
        "BROKER_DB_POOL_MIN_SIZE": "1",
        "BROKER_DB_POOL_MAX_SIZE": "2",
        "BROKER_DB_POOL_TIMEOUT": "2",
    }
    with gunicorn(tmp_path / "gunicorn.log", **pool) as url:
        token = broker_token(url, client_id, secret)
        # The stored token has expired by now: every caller needs the refresh.
        remaining = (grant.access_expires_at - timezone.now()).total_seconds()
        time.sleep(max(0.0, remaining) + 0.1)
        sandbox.faults(mode="slow", delay=4)
        before = refresh_count(sandbox)
        start = threading.Barrier(10)
        answers: list[requests.Response] = []

        def call() -> None:
            start.wait()
            answers.append(
                requests.post(
                    f"{url}/api/v1/access-token",
                    json={"grant": str(grant.pk), "min_ttl": 1},
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=TIMEOUT,
                )
            )

        callers = [threading.Thread(target=call) for _ in range(10)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(TIMEOUT)

    assert [answer.status_code for answer in answers] == [200] * 10, [
        answer.text for answer in answers if answer.status_code != 200
    ]
    assert len({digest(answer.json()["access_token"]) for answer in answers}) == 1
    assert refresh_count(sandbox) == before + 1


class TableLock:
    """Locks a table from outside the broker, as a long migration or query would: every
    broker query on it waits, holding its connection, until release()."""

    def __init__(self) -> None:
        self.holder = psycopg.connect(database_url(), autocommit=False)

    def lock(self, table: str) -> None:
        self.holder.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")

    def release(self) -> None:
        self.holder.rollback()

    def waiters(self) -> int:
        """Sessions of this database waiting on a lock."""
        with psycopg.connect(database_url(), autocommit=True) as watcher:
            row = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database()"
            ).fetchone()
        return int(row[0]) if row else 0


@pytest.fixture
def table_lock():
    lock = TableLock()
    yield lock
    lock.release()
    lock.holder.close()


def test_a_request_that_gets_no_connection_is_answered_503_with_retry_after(table_lock, tmp_path):
    service = ServiceClient.objects.create(client_id="pool-busy", name="Pool busy")
    secret = service_secrets.new_secret(service)
    pool = {
        "WEB_CONCURRENCY": "1",
        "BROKER_DB_POOL_MIN_SIZE": "1",
        "BROKER_DB_POOL_MAX_SIZE": "1",
        "BROKER_DB_POOL_TIMEOUT": "1",
    }
    log_file = tmp_path / "gunicorn.log"
    with gunicorn(log_file, **pool) as url:
        table_lock.lock("broker_serviceclient")
        # The first request takes the process's only connection and waits on the lock.
        first: list[requests.Response] = []
        holder = threading.Thread(
            target=lambda: first.append(token_request(url, service.client_id, secret))
        )
        holder.start()
        deadline = time.monotonic() + TIMEOUT
        while table_lock.waiters() == 0:
            assert time.monotonic() < deadline, "the first request never reached the database"
            time.sleep(0.1)

        api = token_request(url, service.client_id, secret)
        page = requests.get(f"{url}/connections/", cookies={"sessionid": "x" * 32}, timeout=TIMEOUT)
        assert holder.is_alive(), "the first request did not hold the connection meanwhile"
        table_lock.release()
        holder.join(TIMEOUT)

    assert api.status_code == 503
    assert api.json()["error"] == "temporarily_unavailable"
    assert int(api.headers["Retry-After"]) > 0
    assert page.status_code == 503
    assert page.headers["Content-Type"].startswith("text/html")
    assert "The broker is busy" in page.text
    assert int(page.headers["Retry-After"]) > 0
    # The first request waited for its connection's query, and then was served.
    assert [response.status_code for response in first] == [200]
    assert "Traceback" not in log_file.read_text()


def test_a_pooled_connection_the_server_ended_is_answered_503_then_replaced(tmp_path):
    """A PostgreSQL restart (or pg_terminate_backend) ends the pool's idle connections; the
    request that finds one dead is told to retry (JSON 503 + Retry-After), not 500, and the
    next one gets a new connection."""
    service = ServiceClient.objects.create(client_id="pool-ended", name="Pool ended")
    secret = service_secrets.new_secret(service)
    log_file = tmp_path / "gunicorn.log"
    pool = {"WEB_CONCURRENCY": "1", "BROKER_DB_POOL_MIN_SIZE": "1", "BROKER_DB_POOL_MAX_SIZE": "1"}
    # libpq's PGAPPNAME names gunicorn's connections, so that only they are ended.
    with gunicorn(log_file, PGAPPNAME="broker-pool-ended", **pool) as url:
        assert token_request(url, service.client_id, secret).status_code == 200
        with psycopg.connect(database_url(), autocommit=True) as admin:
            ended_count = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'broker-pool-ended'"
            ).fetchone()
        assert ended_count and ended_count[0] >= 1
        ended = token_request(url, service.client_id, secret)
        after = token_request(url, service.client_id, secret)

    assert ended.status_code == 503
    assert ended.json()["error"] == "temporarily_unavailable"
    assert int(ended.headers["Retry-After"]) > 0
    assert after.status_code == 200
    assert "Traceback" not in log_file.read_text()


def test_a_server_refusing_connections_counts_as_busy(transactional_db):
    """PostgreSQL's own refusal (too many connections, SQLSTATE 53300), as Django raises
    it, is "busy"; other connection failures are not."""
    role = f"broker_busy_{secrets.token_hex(4)}"
    with psycopg.connect(database_url(), autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 0")
    default = connections["default"]
    wrapper = type(default)
    try:
        refused = wrapper({**default.settings_dict, "USER": role, "OPTIONS": {}}, alias="busy")
        with pytest.raises(OperationalError) as too_many:
            refused.ensure_connection()
        missing = wrapper(
            {**default.settings_dict, "NAME": f"{role}_missing", "OPTIONS": {}}, alias="gone"
        )
        with pytest.raises(OperationalError) as no_database:
            missing.ensure_connection()
    finally:
        with psycopg.connect(database_url(), autocommit=True) as admin:
            admin.execute(f"DROP ROLE {role}")
    assert "too many connections" in str(too_many.value)
    assert is_database_busy(too_many.value)
    assert not is_database_busy(no_database.value)


class Relay:
    """A TCP relay to PostgreSQL that can drop every connection at once, with no goodbye
    from the server (as a network cut or a host going away does)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            self.sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self.pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass

    def cut(self) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.listener.close()
        self.cut()


def test_a_connection_lost_without_a_sqlstate_counts_as_busy(transactional_db):
    """A connection whose socket closed under it (no FATAL from the server: libpq's
    "server closed the connection unexpectedly") is busy, not a 500."""
    default = connections["default"]
    settings_dict = default.settings_dict
    relay = Relay(settings_dict["HOST"] or "127.0.0.1", int(settings_dict["PORT"] or 5432))
    relayed = type(default)(
        {**settings_dict, "HOST": "127.0.0.1", "PORT": relay.port, "OPTIONS": {}}, alias="relay"
    )
    try:
        with relayed.cursor() as cursor:
            cursor.execute("SELECT 1")
        relay.cut()
        with pytest.raises(OperationalError) as lost, relayed.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        relay.close()
        relayed.close()
    assert getattr(lost.value.__cause__, "sqlstate", None) is None
    assert is_database_busy(lost.value)
