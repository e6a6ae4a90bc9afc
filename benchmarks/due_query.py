"""The beat's due-grant selection on PostgreSQL with a million grants.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/broker_bench_due \
        python benchmarks/due_query.py [--grants 1000000] [--due 5000]

Creates (or recreates) the database named in DATABASE_URL, migrates it, fills it with
INSERT ... SELECT generate_series (next refresh times spread over the next hour, `--due`
of them overdue, 2% not active), then prints the timing of the claim query
(`broker.refresh.claims.claim_due_grants`) and its EXPLAIN ANALYZE plan. Reuses a filled database
unless --refill.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/broker_bench_due")

FILL = """
INSERT INTO broker_grant (
    id, user_id, provider_app_id, external_account_id, account_name, account_email,
    scopes, resources, status, access_token_sealed, refresh_token_sealed,
    token_secret_sealed, token_version, next_refresh_at, failure_count, last_error,
    consented_at, created_at, updated_at, revoked_reason)
SELECT gen_random_uuid(), %(user)s, %(app)s, 'acc-' || g, '', '', '[]', '[]',
    CASE WHEN g %% 50 = 0 THEN 'reconnect_required' ELSE 'active' END,
    'sealed', 'sealed', '', 1,
    CASE WHEN g %% 50 = 0 THEN NULL
         WHEN g <= %(due)s THEN now() - random() * interval '10 minutes'
         ELSE now() + interval '1 minute' + random() * interval '1 hour' END,
    0, '', now(), now(), now(), ''
FROM generate_series(1, %(grants)s) AS g
"""


def recreate_database(url: str) -> None:
    import psycopg

    parsed = urlparse(url)
    name = parsed.path.lstrip("/")
    admin = parsed._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')


def database_exists(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(url) as conn:
            return conn.execute("SELECT to_regclass('broker_grant') IS NOT NULL").fetchone()[0]
    except psycopg.OperationalError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grants", type=int, default=1_000_000)
    parser.add_argument("--due", type=int, default=5_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--refill", action="store_true")
    args = parser.parse_args()
    url = os.environ["DATABASE_URL"]
    fill = args.refill or not database_exists(url)
    if fill:
        recreate_database(url)

    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection, transaction
    from django.utils import timezone

    from accounts.models import User
    from broker.models import Grant, ProviderApp
    from broker.refresh.claims import claim_due_grants

    if fill:
        call_command("migrate", verbosity=0)
        user = User.objects.create_user("bench", password=None)
        app = ProviderApp.objects.create(slug="bench", kind="atlassian", name="Bench")
        started = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute(
                FILL, {"user": user.pk, "app": app.pk, "due": args.due, "grants": args.grants}
            )
            cursor.execute("VACUUM ANALYZE broker_grant")
        print(f"filled {args.grants:,} grants in {time.perf_counter() - started:.1f} s")
    total = Grant.objects.count()
    due = Grant.objects.filter(status="active", next_refresh_at__lte=timezone.now()).count()
    print(f"grants: {total:,}, due now: {due:,}, batch: {args.batch}")

    # The claim's SELECT, as claim_due_grants issues it.
    with transaction.atomic():
        query = (
            Grant.objects.filter(status="active", next_refresh_at__lte=timezone.now())
            .order_by("next_refresh_at")
            .values_list("pk", flat=True)
            .select_for_update(skip_locked=True)[: args.batch]
        )
        sql, params = query.query.sql_with_params()
        with connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", params)
            plan = "\n".join(row[0] for row in cursor.fetchall())
    print("EXPLAIN ANALYZE of the claim's SELECT:\n" + plan)

    timings = []
    for _ in range(20):
        with transaction.atomic():
            started = time.perf_counter()
            list(query.all())
            timings.append((time.perf_counter() - started) * 1000)
            transaction.set_rollback(True)
    print(f"due selection: median {statistics.median(timings):.2f} ms, max {max(timings):.2f} ms")

    # Whole claims (select + UPDATE of the batch), rolled back so the data stays as filled.
    claims = []
    for _ in range(10):
        with transaction.atomic():
            started = time.perf_counter()
            claimed = claim_due_grants(on_claimed=lambda ids: None, batch_size=args.batch)
            claims.append((time.perf_counter() - started) * 1000)
            transaction.set_rollback(True)
    print(
        f"claim of {len(claimed)} grants (select + update): median "
        f"{statistics.median(claims):.1f} ms, max {max(claims):.1f} ms"
    )


if __name__ == "__main__":
    main()
