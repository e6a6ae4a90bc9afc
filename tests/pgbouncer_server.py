"""PgBouncer (Debian's `pgbouncer`) in transaction pooling in front of the test run's
PostgreSQL, on a free loopback port: what a deployment with BROKER_DB_BEHIND_PGBOUNCER=1
connects to. Plain Python (no Django), so the drills can use it too."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from tests import processes
from tests.sandbox_server import free_port

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def installed() -> bool:
    return Path(PGBOUNCER).is_file()


def command(
    directory: Path,
    *,
    server_host: str,
    server_port: int,
    listen_addr: str,
    port: int,
    pool_size: int = 4,
    users: tuple[str, ...] = ("postgres",),
    run_as: str = "postgres",
) -> list[str]:
    """Writes a configuration into `directory` (which must be readable by `run_as`: as root
    pgbouncer drops to that user before reading it, since it refuses to run as root) and
    returns the command that runs pgbouncer with it, in the foreground. Transaction pooling;
    its server connections are handed out in turn (`server_round_robin`), as under load
    from many clients: state a client left on one server connection is then missing on its
    next transaction."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    (directory / "userlist.txt").write_text("".join(f'"{user}" ""\n' for user in users))
    config = directory / "pgbouncer.ini"
    config.write_text(
        "[databases]\n"
        f"* = host={server_host} port={server_port}\n"
        "[pgbouncer]\n"
        f"listen_addr = {listen_addr}\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {directory / 'userlist.txt'}\n"
        "admin_users = postgres\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {pool_size}\n"
        f"min_pool_size = {min(2, pool_size)}\n"
        "server_round_robin = 1\n"
        "max_client_conn = 2000\n"
        "ignore_startup_parameters = extra_float_digits\n"
        # After a failed login to PostgreSQL (it restarting) PgBouncer waits this long before
        # trying again, answering every client with an error meanwhile: 15 s by default.
        "server_login_retry = 1\n"
    )
    for path in (directory / "userlist.txt", config):
        path.chmod(0o644)
    args = [PGBOUNCER, str(config)]
    if os.geteuid() == 0:
        args[1:1] = ["-u", run_as]
    return args


@contextmanager
def pgbouncer(
    log_file: Path, *, server_host: str = "127.0.0.1", server_port: int = 5432
) -> Iterator[int]:
    """Runs pgbouncer on a free loopback port until the block ends; yields the port."""
    port = free_port()
    directory = Path(tempfile.mkdtemp(prefix="broker-pgbouncer-"))
    args = command(
        directory,
        server_host=server_host,
        server_port=server_port,
        listen_addr="127.0.0.1",
        port=port,
    )
    try:
        with processes.running(
            args,
            log_file,
            lambda: processes.listening("127.0.0.1", port),
            "pgbouncer to listen",
            seconds=20,
            stop_timeout=10,
        ):
            yield port
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def transactions_served(host: str, port: int, database: str) -> int:
    """Transactions pgbouncer has passed to `database` (its admin console's SHOW STATS)."""
    with (
        psycopg.connect(
            host=host,
            port=port,
            dbname="pgbouncer",
            user="postgres",
            autocommit=True,
            prepare_threshold=None,
        ) as admin,
        admin.cursor() as cursor,
    ):
        cursor.execute("SHOW STATS")
        columns = [column.name for column in cursor.description or []]
        for row in cursor.fetchall():
            stats = dict(zip(columns, row, strict=True))
            if stats["database"] == database:
                return int(stats["total_xact_count"])
    return 0
