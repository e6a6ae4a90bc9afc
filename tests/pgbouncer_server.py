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


@contextmanager
def pgbouncer(
    log_file: Path,
    *,
    server_host: str = "127.0.0.1",
    server_port: int = 5432,
    listen_addr: str = "127.0.0.1",
    port: int = 0,
    pool_size: int = 4,
    run_as: str = "postgres",
) -> Iterator[int]:
    """Runs pgbouncer until the block ends; yields its port. Its server connections are
    handed out in turn (`server_round_robin`), as under load from many clients: state a
    client left on one server connection is then missing on its next transaction. As root
    it runs as `run_as` (pgbouncer refuses root)."""
    port = port or free_port()
    # pgbouncer reads its files after dropping root: a directory of its own it may read.
    directory = Path(tempfile.mkdtemp(prefix="broker-pgbouncer-"))
    directory.chmod(0o755)
    (directory / "userlist.txt").write_text('"postgres" ""\n')
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
        "max_client_conn = 1000\n"
        "ignore_startup_parameters = extra_float_digits\n"
    )
    for path in directory.iterdir():
        path.chmod(0o644)
    args = [PGBOUNCER, str(config)]
    if os.geteuid() == 0:
        args[1:1] = ["-u", run_as]
    process = processes.start(args, log_file)
    try:
        processes.wait_until(
            lambda: processes.listening(listen_addr, port),
            20,
            "pgbouncer to listen",
            process=process,
            log_file=log_file,
        )
        yield port
    finally:
        processes.stop(process, timeout=10)
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
