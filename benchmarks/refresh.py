"""Refresh throughput: N grants due at once, real Celery workers, the sandbox as provider.

    REDIS_URL=redis://127.0.0.1:6379/<db> python benchmarks/refresh.py [--grants 2000]
        [--workers 1 2] [--database-url postgres://postgres@127.0.0.1:5432/broker_bench_refresh]

Starts a sandbox (1-hour access tokens), mints N real token pairs there
(`sandbox_mint_tokens`), stores them as N grants, then for each worker count: marks all
grants due, runs the beat's claim (`broker.tasks.enqueue_due_refreshes`), starts that many
solo-pool `celery -A broker worker` processes and waits until every grant was refreshed.
Prints refreshes per second, worker CPU milliseconds per refresh (utime + stime from
/proc/<pid>/stat; the sandbox's own CPU beside it, as it shares the machine), and the
upstream refresh calls the sandbox counted (must equal N).
The database is recreated on each run (SQLite file data/bench-refresh.sqlite3 by default).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.measure import cpu_seconds, fresh_database  # noqa: E402
from tests import processes  # noqa: E402


def start_workers(
    count: int, log_dir: Path, profile_to: str | None = None
) -> list[subprocess.Popen[bytes]]:
    workers = []
    for n in range(count):
        command = processes.celery_worker(f"bench-{n}-{os.getpid()}", loglevel="WARNING")
        if profile_to:  # the same arguments, to celery under cProfile
            out = f"{profile_to}.{n}" if count > 1 else profile_to
            profiled = [str(ROOT / "benchmarks" / "profiled_worker.py"), out]
            command = [command[0], *profiled, *command[command.index("celery") + 1 :]]
        workers.append(processes.start(command, log_dir / f"worker-{n}.log"))
    # Imports and connecting (about 0.9 s of CPU each) must be over before the CPU count
    # starts at the claim, or a loaded machine's slow start-up is counted as refreshes':
    # wait until no worker has used CPU for half a second.
    time.sleep(2)
    cpu = [cpu_seconds(w.pid) for w in workers]
    for _ in range(120):
        time.sleep(0.5)
        for worker in workers:
            if worker.poll() is not None:
                raise SystemExit(f"a worker exited early; see {log_dir}")
        now = [cpu_seconds(w.pid) for w in workers]
        if now == cpu:
            break
        cpu = now
    return workers


def stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        processes.stop(worker, timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grants", type=int, default=2000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--database-url", default=None)
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="then N refreshes in this process under cProfile (the task's body, no Celery)",
    )
    parser.add_argument("--profile-out", default=None, help="also save that profile (pstats)")
    parser.add_argument(
        "--profile-worker",
        default=None,
        metavar="FILE",
        help="run the workers under cProfile (CPU clock), profile saved to FILE (FILE.n)",
    )
    args = parser.parse_args()

    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"  # fixed keys, HTTP allowed
    os.environ["DATABASE_URL"] = fresh_database(args.database_url, "bench-refresh")
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/5")

    import django

    django.setup()
    import redis
    from django.conf import settings
    from django.core.management import call_command
    from django.db.models import Min
    from django.utils import timezone

    from accounts.models import User
    from broker.models import Grant, ProviderApp
    from broker.refresh import tasks
    from tests.sandbox_server import mint_tokens, sandbox_env, start_sandbox, store_minted

    call_command("migrate", verbosity=0)
    queue = redis.Redis.from_url(settings.REDIS_URL)
    queue.delete("celery", "unacked", "unacked_index")
    work = Path(tempfile.mkdtemp(prefix="bench-refresh-"))
    sandbox = start_sandbox(work, "http://localhost:8000", access_token_seconds=3600)
    try:
        call_command("loadproviders", str(sandbox.providers_file), verbosity=0)
        app = ProviderApp.objects.get(slug="sandbox")
        port = int(urlparse(sandbox.url).port or 0)
        started = time.perf_counter()
        minted = mint_tokens(
            sandbox_env(work, port, 3600), work / "tokens.json", app.client_id, args.grants
        )
        user = User.objects.create_user("bench", password=None)
        grants = []
        for n, token in enumerate(minted):
            grant = Grant(user=user, provider_app=app, external_account_id=f"bench-{n}")
            store_minted(grant, token)
            grants.append(grant)
        Grant.objects.bulk_create(grants, batch_size=500)
        print(
            f"{args.grants} grants with real sandbox tokens in "
            f"{time.perf_counter() - started:.1f} s ({settings.DATABASES['default']['ENGINE']})"
        )

        for worker_count in args.workers:
            version = Grant.objects.aggregate(v=Min("token_version"))["v"]
            Grant.objects.update(next_refresh_at=timezone.now())
            sandbox.reset_counters()
            workers = start_workers(worker_count, work, args.profile_worker)
            cpu_before = sum(cpu_seconds(w.pid) for w in workers)
            provider_cpu_before = cpu_seconds(sandbox.process.pid)
            clock = time.perf_counter()
            claimed = tasks.enqueue_due_refreshes()
            claim_seconds = time.perf_counter() - clock
            while Grant.objects.filter(token_version__lte=version).exists():
                time.sleep(0.2)
                if time.perf_counter() - clock > 1800:
                    raise SystemExit("refreshes did not finish within 30 minutes")
            elapsed = time.perf_counter() - clock
            cpu = sum(cpu_seconds(w.pid) for w in workers) - cpu_before
            provider_cpu = cpu_seconds(sandbox.process.pid) - provider_cpu_before
            stop_workers(workers)
            upstream = sandbox.counters()["token"]["refresh_token"]
            failed = Grant.objects.exclude(status="active").count()
            print(
                f"workers={worker_count}: claimed {claimed} in {claim_seconds * 1000:.0f} ms; "
                f"{args.grants} refreshes in {elapsed:.1f} s = {args.grants / elapsed:.1f}/s; "
                f"worker CPU {cpu * 1000 / args.grants:.1f} ms/refresh "
                f"(sandbox {provider_cpu * 1000 / args.grants:.1f} ms); "
                f"upstream refresh calls {upstream} (expected {args.grants}); "
                f"grants not active {failed}"
            )
        if args.profile:
            profile_refreshes(grants[: args.profile], args.profile_out)
    finally:
        sandbox.stop()


def profile_refreshes(grants: list, out_file: str | None = None) -> None:  # type: ignore[type-arg]
    """The refresh task's body for each grant, in this process, under cProfile: CPU per
    refresh and the top costs (cumulative, then own time)."""
    from django.utils import timezone

    from broker.models import Grant
    from broker.refresh import tasks

    Grant.objects.filter(pk__in=[g.pk for g in grants]).update(next_refresh_at=timezone.now())
    tasks.refresh_grant.run(str(grants[0].pk))  # imports, connections
    # The first half without the profiler (its CPU per refresh), the second half under it.
    half = len(grants) // 2
    plain = time.process_time()
    for grant in grants[1:half]:
        tasks.refresh_grant.run(str(grant.pk))
    plain = time.process_time() - plain
    print(f"in process: {half - 1} refreshes, {plain * 1000 / (half - 1):.1f} ms CPU each")
    grants = grants[half - 1 :]
    profiler = cProfile.Profile(time.process_time)  # CPU, not the wait for the provider
    cpu = time.process_time()
    profiler.enable()
    for grant in grants[1:]:
        tasks.refresh_grant.run(str(grant.pk))
    profiler.disable()
    cpu = time.process_time() - cpu
    if out_file:
        profiler.dump_stats(out_file)
    each = cpu * 1000 / (len(grants) - 1)
    print(f"under cProfile: {len(grants) - 1} refreshes, {each:.1f} ms CPU each")
    for order in ("cumulative", "tottime"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(order).print_stats(25)
        print(out.getvalue())


if __name__ == "__main__":
    main()
