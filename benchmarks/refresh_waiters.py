"""P2: many callers on one refresh (printed figures, not a timed test).

    .venv/bin/python benchmarks/refresh_waiters.py [--callers 200] [--delay 2]
        [--database-url postgres://postgres@127.0.0.1:5432/broker_bench_waiters]

Starts the sandbox provider and the broker under gunicorn (gunicorn.conf.py as it is; set
WEB_CONCURRENCY / GUNICORN_THREADS to try others), stores one grant holding real sandbox
tokens, slows the sandbox's token endpoint to `--delay` seconds, then sends `--callers`
concurrent `POST /api/v1/access-token` with `force_refresh` for that grant. Prints the
upstream refresh calls the sandbox counted (goal: exactly 1), the answers (goal: all 200
with one and the same new token) and the latency beyond the upstream delay (goal: p99 <=
10% of the delay). REDIS_URL picks the Redis database (default 13); the database is
recreated (SQLite file data/bench-waiters.sqlite3 by default).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.measure import fresh_database, percentile  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--callers", type=int, default=200)
    parser.add_argument("--delay", type=float, default=2.0)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()

    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"  # fixed keys, HTTP allowed
    os.environ["DATABASE_URL"] = fresh_database(args.database_url, "bench-waiters")
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/13")
    os.environ.setdefault("LOG_LEVEL", "WARNING")

    import django

    django.setup()
    from django.core.management import call_command

    from accounts.models import User
    from broker.api import service_secrets
    from broker.infra.redis_connection import redis_client
    from broker.models import AccessRule, Grant, ProviderApp, ServiceClient
    from broker.providers.oauth2_client import TokenResponse
    from broker.refresh.schedule import apply_token_response
    from tests.sandbox_server import MANAGE, free_port, sandbox_env, start_sandbox

    call_command("migrate", verbosity=0)
    redis_client().flushdb()  # the benchmark's own database
    work = Path(tempfile.mkdtemp(prefix="bench-waiters-"))
    sandbox = start_sandbox(work, "http://localhost:8000", access_token_seconds=3600)
    server = None
    try:
        call_command("loadproviders", str(sandbox.providers_file), verbosity=0)
        app = ProviderApp.objects.get(slug="sandbox")
        subprocess.run(
            [
                sys.executable,
                str(MANAGE),
                "sandbox_mint_tokens",
                "--client-id",
                app.client_id,
                "--count",
                "1",
                "--out",
                str(work / "tokens.json"),
            ],
            env=sandbox_env(work, int(urlparse(sandbox.url).port or 0), 3600),
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        [minted] = json.loads((work / "tokens.json").read_text())
        user = User.objects.create_user("bench", password=None)
        grant = Grant(user=user, provider_app=app, external_account_id="bench")
        response = TokenResponse(
            minted["access_token"],
            minted["refresh_token"],
            minted["expires_in"],
            minted["scope"].split(),
            "Bearer",
        )
        apply_token_response(grant, response, refreshed=False)
        grant.save()
        service = ServiceClient.objects.create(client_id="bench-waiters", name="Bench")
        secret = service_secrets.new_secret(service)
        AccessRule.objects.create(service=service, provider_app=app, scopes=list(app.scopes))

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "gunicorn"), "-b", f"127.0.0.1:{port}"],
            cwd=ROOT,
            env=os.environ,
            stdout=(work / "gunicorn.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(f"{url}/healthz", timeout=1)
                break
            except requests.RequestException:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit(f"gunicorn did not start; see {work}/gunicorn.log") from None
                time.sleep(0.2)
        token = requests.post(
            f"{url}/api/v1/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=(service.client_id, secret),
            timeout=10,
        ).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        body = {"grant": str(grant.pk), "force_refresh": True}
        # Every worker process and thread has served a fetch (imports, connections warm).
        warm = [
            threading.Thread(
                target=requests.post,
                args=(f"{url}/api/v1/access-token",),
                kwargs={"json": {"grant": str(grant.pk)}, "headers": headers, "timeout": 30},
            )
            for _ in range(64)
        ]
        for thread in warm:
            thread.start()
        for thread in warm:
            thread.join()

        sandbox.faults(mode="slow", delay=args.delay)
        sandbox.reset_counters()
        barrier = threading.Barrier(args.callers)
        answers: list[tuple[int, str, float]] = []
        moments: list[tuple[float, float]] = []

        def call() -> None:
            session = requests.Session()
            barrier.wait()
            sent = time.monotonic()
            try:
                answer = session.post(
                    f"{url}/api/v1/access-token", json=body, headers=headers, timeout=60
                )
                status = answer.status_code
                digest = (
                    hashlib.sha256(answer.json()["access_token"].encode()).hexdigest()[:12]
                    if status == 200
                    else answer.text[:80]
                )
            except requests.RequestException as exc:
                status, digest = 0, type(exc).__name__
            answers.append((status, digest, time.monotonic() - sent))
            moments.append((sent, time.monotonic()))

        callers = [threading.Thread(target=call) for _ in range(args.callers)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join()
        sandbox.faults(mode="none")
        upstream = sandbox.counters()["token"].get("refresh_token", 0)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        sandbox.stop()

    ok = [a for a in answers if a[0] == 200]
    tokens = {a[1] for a in ok}
    beyond = [max(0.0, a[2] - args.delay) * 1000 for a in answers]
    failures: dict[str, int] = {}
    for status, text, _ in answers:
        if status != 200:
            failures[f"{status} {text}"] = failures.get(f"{status} {text}", 0) + 1
    print(
        f"gunicorn.conf.py (WEB_CONCURRENCY={os.environ.get('WEB_CONCURRENCY', os.cpu_count())}, "
        f"GUNICORN_THREADS={os.environ.get('GUNICORN_THREADS', 'default')}), "
        f"{args.callers} callers, upstream delay {args.delay:g} s, "
        f"{django.conf.settings.DATABASES['default']['ENGINE']}"
    )
    print(f"P2 upstream refresh calls: {upstream} (goal 1) {'OK' if upstream == 1 else 'MISSED'}")
    verdict = "OK" if len(ok) == args.callers and len(tokens) == 1 else "MISSED"
    print(
        f"P2 answers: {len(ok)}/{args.callers} 200 with {len(tokens)} distinct token(s) "
        f"(goal all, one token) {verdict}"
    )
    for failure, count in sorted(failures.items()):
        print(f"   {count} x {failure}")
    first = min(sent for sent, _ in moments)
    print(
        f"   requests sent within {(max(s for s, _ in moments) - first) * 1000:.0f} ms; answers "
        f"from {(min(d for _, d in moments) - first) * 1000:.0f} to "
        f"{(max(d for _, d in moments) - first) * 1000:.0f} ms after the first was sent"
    )
    p99 = percentile(beyond, 0.99)
    goal = args.delay * 100  # 10% of the delay, in ms
    print(
        f"P2 latency beyond the delay: p50 {percentile(beyond, 0.5):.0f} ms, p99 {p99:.0f} ms, "
        f"min {min(beyond):.0f} ms, max {max(beyond):.0f} ms "
        f"(goal p99 <= {goal:.0f} ms) {'OK' if p99 <= goal else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
