"""The audit table's growth per million token fetches, and the time its retention prune takes.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/broker_bench_audit \
        REDIS_URL=redis://127.0.0.1:6379/12 python benchmarks/audit_growth.py [--events 100000]
    DATABASE_URL=sqlite:////tmp/broker_bench_audit.sqlite3 \
        REDIS_URL=redis://127.0.0.1:6379/12 python benchmarks/audit_growth.py

Recreates the database named in DATABASE_URL (PostgreSQL: drops it; SQLite: deletes the
file), migrates it, then writes `--events` token-issue events the way the internal API
does: each recorded by `trail.service_event("token.issued", ...)` as
`POST /api/v1/access-token` records it (a grant id, a username, the app slug, three scopes,
`min_ttl`, `force_refresh`, a request id, the client's IPv4 address), one insert each.
Prints the table's size with its indexes (PostgreSQL: `pg_total_relation_size`; SQLite:
the pages of the table and its indexes in `dbstat`), per event and per million, then ages
every event past the retention and times `broker.audit.retention.prune` (each batch's
DELETE, the longest of which is how long the prune holds a lock at once).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/broker_bench_audit")

TABLE = "broker_auditevent"
SERVICES = 20
USERS = 2000
SCOPES = ["read:jira-work", "read:confluence-content.all", "offline_access"]


def recreate_database(url: str) -> None:
    parsed = urlparse(url)
    if parsed.scheme.startswith("sqlite"):
        path = Path(parsed.path)
        for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            leftover.unlink(missing_ok=True)
        return
    import psycopg

    name = parsed.path.lstrip("/")
    admin = parsed._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')


def table_bytes() -> dict[str, int]:
    """The audit table's size: its rows (heap, TOAST) and its indexes."""
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"VACUUM ANALYZE {TABLE}")
            cursor.execute("SELECT pg_total_relation_size(%s), pg_indexes_size(%s)", [TABLE, TABLE])
            total, indexes = cursor.fetchone()
        else:
            cursor.execute(
                "SELECT name, SUM(pgsize) FROM dbstat WHERE name = %s OR name IN "
                "(SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = %s) "
                "GROUP BY name",
                [TABLE, TABLE],
            )
            sizes = dict(cursor.fetchall())
            total = sum(sizes.values())
            indexes = total - sizes[TABLE]
    return {"total": int(total), "indexes": int(indexes), "rows": int(total - indexes)}


def write_events(count: int) -> float:
    """Writes `count` token-issue events through the API's writer; returns the seconds."""
    from django.test import RequestFactory

    from broker.audit import trail

    rng = random.Random(25)
    grants = [(uuid.UUID(int=rng.getrandbits(128)), f"user{n:04d}") for n in range(USERS)]
    services = [f"svc-{rng.getrandbits(32):08x}" for _ in range(SERVICES)]
    factory = RequestFactory()
    started = time.perf_counter()
    for _ in range(count):
        grant_id, username = rng.choice(grants)
        request = factory.post(
            "/api/v1/access-token",
            REMOTE_ADDR=f"10.20.{rng.randrange(256)}.{rng.randrange(1, 255)}",
        )
        trail.service_event(
            "token.issued",
            rng.choice(services),
            request=request,
            grant_id=grant_id,
            subject_user=username,
            provider="atlassian",
            scopes=SCOPES,
            min_ttl=60,
            force_refresh=False,
            request_id=uuid.UUID(int=rng.getrandbits(128)).hex,
        )
    return time.perf_counter() - started


def timed_prune() -> dict[str, Any]:
    """Ages every event past the retention, then prunes them, timing each DELETE."""
    from django.conf import settings
    from django.db import connection

    from broker.audit import retention

    days = settings.BROKER_AUDIT_RETENTION_DAYS or 400
    settings.BROKER_AUDIT_RETENTION_DAYS = days
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"UPDATE {TABLE} SET at = at - interval '{days + 1} days'")  # noqa: S608
        else:
            cursor.execute(f"UPDATE {TABLE} SET at = datetime(at, '-{days + 1} days')")  # noqa: S608
    deletes: list[float] = []

    def timing(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            if sql.lstrip().upper().startswith("DELETE"):
                deletes.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    with connection.execute_wrapper(timing):
        report = retention.prune()
    return {
        "deleted": report["deleted"],
        "batches": report["batches"],
        "seconds": time.perf_counter() - started,
        "delete_median_ms": statistics.median(deletes) if deletes else 0.0,
        "delete_max_ms": max(deletes, default=0.0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    recreate_database(os.environ["DATABASE_URL"])

    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from broker.audit.retention import PRUNE_BATCH
    from broker.models import AuditEvent

    call_command("migrate", verbosity=0)
    empty = table_bytes()
    seconds = write_events(args.events)
    stored = AuditEvent.objects.count()
    size = table_bytes()
    grown = {k: size[k] - empty[k] for k in size}
    per_event = grown["total"] / stored
    mib = 1024 * 1024
    print(
        f"database: {connection.vendor}; {stored:,} token-issue events written in {seconds:.1f} s"
    )
    print(
        f"audit table with indexes: {size['total'] / mib:.1f} MiB "
        f"(rows {size['rows'] / mib:.1f} MiB, indexes {size['indexes'] / mib:.1f} MiB)"
    )
    print(
        f"per event: {per_event:.0f} bytes (rows {grown['rows'] / stored:.0f}, "
        f"indexes {grown['indexes'] / stored:.0f})"
    )
    print(
        f"per million fetches: {per_event * 1_000_000 / mib:.0f} MiB "
        f"({per_event * 1_000_000 / 1e9:.2f} GB)"
    )
    pruned = timed_prune()
    print(
        f"prune of {pruned['deleted']:,} expired events in {pruned['batches']} batches of "
        f"{PRUNE_BATCH}: {pruned['seconds']:.1f} s; each DELETE median "
        f"{pruned['delete_median_ms']:.0f} ms, longest {pruned['delete_max_ms']:.0f} ms"
    )


if __name__ == "__main__":
    main()
