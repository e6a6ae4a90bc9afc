"""Benchmark of the internal API's hot path (printed figures, not a timed test).

Starts the broker under gunicorn (gunicorn.conf.py as it is, production settings, loopback
HTTP) on its own PostgreSQL database (`broker_bench`) and Redis DB 12, then alternates wrk
runs (16 connections, bounded time) between:
  (a) POST /api/v1/access-token for a grant whose stored token is valid, named by its id
      ({"grant"}),
  (b) the same grant named as most services name it ({"user", "provider"}),
  (c) GET /api/v1/ping: a trivial JSON view behind the same broker-token authentication,
      rate limit, middleware and wrapper (`broker.api.decorators.api_view`), and
  (d) GET /healthz.
Prints requests/s, p50 and p99 for each, the ratios of (a) and (b) to (c), and a cProfile
of the hot path.

    .venv/bin/python benchmarks/api.py [--seconds 10] [--rounds 2]

Needs PostgreSQL on 127.0.0.1:5432 (user postgres), Redis on 127.0.0.1:6379 and `wrk`.
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import io
import json
import os
import pstats
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DB_NAME = os.environ.get("BENCH_DB_NAME", "broker_bench")
REDIS_DB = os.environ.get("BENCH_REDIS_DB", "12")
ENV = {
    "DJANGO_SETTINGS_MODULE": "broker.settings",
    "DEBUG": "0",
    "BROKER_PUBLIC_URL": "http://127.0.0.1",
    "BROKER_ALLOW_HTTP": "1",
    "SECRET_KEY": "benchmark-secret-key-" + "x" * 40,
    "BROKER_ENCRYPTION_KEYS": "bench:" + base64.b64encode(b"b" * 32).decode(),
    "ALLOWED_HOSTS": "127.0.0.1,localhost",
    "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DB_NAME}",
    "REDIS_URL": f"redis://127.0.0.1:6379/{REDIS_DB}",
    "BROKER_API_RATE_LIMIT": "0",
    "LOG_LEVEL": "WARNING",
}
os.environ.update(ENV)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare_database() -> None:
    exists = subprocess.run(
        [
            "psql",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-tAc",
            f"SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}'",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not exists:
        subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", DB_NAME], check=True)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, check=True, env=os.environ
    )


def create_fixtures() -> tuple[str, str, str]:
    """A user, an app, a grant with a valid token, a service with a rule. Returns
    (client_id, client_secret, grant_id)."""
    import django

    django.setup()
    from datetime import timedelta

    from django.utils import timezone

    from accounts.models import User
    from broker.infra.redis_connection import redis_client
    from broker.models import AccessRule, Grant, ProviderApp, ServiceClient
    from broker.service_identity import service_secrets

    redis_client().flushdb()  # this DB belongs to the benchmark
    Grant.objects.all().delete()
    AccessRule.objects.all().delete()
    ServiceClient.objects.all().delete()
    user, _ = User.objects.get_or_create(username="bench-user")
    app, _ = ProviderApp.objects.update_or_create(
        slug="bench", defaults={"kind": "atlassian", "name": "Bench", "scopes": ["read:me"]}
    )
    grant = Grant(
        user=user,
        provider_app=app,
        external_account_id="bench",
        scopes=["read:me"],
        access_expires_at=timezone.now() + timedelta(days=1),
    )
    grant.seal("access_token", "bench-access-token")
    grant.save()
    service = ServiceClient.objects.create(client_id="bench-service", name="Bench")
    secret = service_secrets.new_secret(service)
    AccessRule.objects.create(service=service, provider_app=app)
    return service.client_id, secret, str(grant.pk)


def broker_token(base: str, client_id: str, secret: str) -> str:
    credentials = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    request = urllib.request.Request(
        f"{base}/api/v1/oauth/token",
        data=b"grant_type=client_credentials",
        headers={
            "Authorization": f"Basic {credentials}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(json.load(response)["access_token"])


def start_gunicorn(port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "broker.wsgi",
            "-b",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=os.environ,
    )
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/openapi.json", timeout=1)
            return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("gunicorn did not start")


LUA = """
wrk.method = "{method}"
wrk.headers["Authorization"] = "Bearer {token}"
wrk.headers["Content-Type"] = "application/json"
{body}
"""


def run_wrk(
    url: str, method: str, token: str, body: str | None, seconds: float
) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            LUA.format(method=method, token=token, body=f"wrk.body = '{body}'" if body else "")
        )
    output = subprocess.run(
        ["wrk", "-t", "2", "-c", "16", "-d", f"{seconds}s", "--latency", "-s", script.name, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.unlink(script.name)
    if "Non-2xx" in output:
        raise SystemExit(f"errors during the run:\n{output}")

    def ms(label: str) -> float:
        match = re.search(rf"{label}\s+([\d.]+)(us|ms|s)", output)
        assert match, output
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    assert rps and total, output
    return {
        "rps": float(rps.group(1)),
        "p50": ms("50%"),
        "p99": ms("99%"),
        "requests": float(total.group(1)),
    }


def worker_rss(server: subprocess.Popen[bytes]) -> dict[int, int]:
    """Resident set size (KiB) of each gunicorn worker (the master's children)."""
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    sizes = {}
    for pid in map(int, children):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                sizes[pid] = int(line.split()[1])
    return sizes


def profile_hot_path(token: str, grant_id: str, calls: int = 2000) -> str:
    """cProfile of the access-token view through the full middleware stack, in-process."""
    from django.test import Client

    client = Client(HTTP_HOST="127.0.0.1")
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    body = {"grant": grant_id}
    for _ in range(50):  # warm up connections and caches
        response = client.post(
            "/api/v1/access-token", body, content_type="application/json", **headers
        )
        assert response.status_code == 200, response.content
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        client.post("/api/v1/access-token", body, content_type="application/json", **headers)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).sort_stats("tottime")
    stats.print_stats(18)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--fetches", type=int, default=100_000, help="token fetches for the memory check (P4)"
    )
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    prepare_database()
    client_id, secret, grant_id = create_fixtures()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_gunicorn(port)
    body = json.dumps({"grant": grant_id})
    by_user = json.dumps({"user": "bench-user", "provider": "bench"})
    try:
        token = broker_token(base, client_id, secret)
        # P4 baseline: RSS after the first 1,000 fetches (a slow machine needs more than
        # one 1 s run for them; measured from fewer, the growth after is overstated).
        done = 0.0
        while done < 1000:
            done += run_wrk(f"{base}/api/v1/access-token", "POST", token, body, 1)["requests"]
        rss_first = worker_rss(server)
        first_count = done
        results: dict[str, list[dict[str, float]]] = {
            "access-token": [],
            "by-user": [],
            "healthz": [],
            "ping": [],
        }
        for _ in range(args.rounds):
            token = broker_token(base, client_id, secret)
            run = run_wrk(f"{base}/api/v1/access-token", "POST", token, body, args.seconds)
            done += run["requests"]
            results["access-token"].append(run)
            run = run_wrk(f"{base}/api/v1/access-token", "POST", token, by_user, args.seconds)
            done += run["requests"]
            results["by-user"].append(run)
            results["healthz"].append(run_wrk(f"{base}/healthz", "GET", token, None, args.seconds))
            results["ping"].append(run_wrk(f"{base}/api/v1/ping", "GET", token, None, args.seconds))
        while done < args.fetches:
            rate = max(r["rps"] for r in results["access-token"])
            seconds = int(min(60, max(1, (args.fetches - done) / rate + 1)))
            token = broker_token(base, client_id, secret)  # lives 5 minutes
            done += run_wrk(f"{base}/api/v1/access-token", "POST", token, body, seconds)["requests"]
        rss_last = worker_rss(server)
    finally:
        server.terminate()
        server.wait(timeout=10)

    def best(name: str) -> dict[str, float]:
        return max(results[name], key=lambda r: r["rps"])

    print(
        f"gunicorn.conf.py (WEB_CONCURRENCY={os.environ.get('WEB_CONCURRENCY', os.cpu_count())}, "
        f"GUNICORN_THREADS={os.environ.get('GUNICORN_THREADS', 'default')}), wrk 16 connections, "
        f"{args.rounds} alternating rounds x {args.seconds}s, PostgreSQL {DB_NAME}, "
        f"Redis DB {REDIS_DB}"
    )
    for name in ("access-token", "by-user", "healthz", "ping"):
        for run in results[name]:
            print(
                f"  {name:13} {run['rps']:8.0f} req/s  p50 {run['p50']:6.2f} ms  "
                f"p99 {run['p99']:6.2f} ms"
            )
    a, u, b, c = best("access-token"), best("by-user"), best("healthz"), best("ping")
    for label, r in (("access-token", a), ("by-user", u), ("healthz", b), ("ping", c)):
        print(f"best {label:13} {r['rps']:.0f} req/s p50 {r['p50']:.2f} ms p99 {r['p99']:.2f} ms")
    for label, r in (("{grant}", a), ("{user, provider}", u)):
        print(
            f"fetch by {label:17} / ping: requests/s {r['rps'] / c['rps']:.2f}, "
            f"p99 {r['p99'] / c['p99']:.2f}; / healthz: requests/s {r['rps'] / b['rps']:.2f}"
        )
    for pid in sorted(rss_first):
        before, after = rss_first[pid], rss_last.get(pid, 0)
        growth = after / before - 1 if before else float("nan")
        print(
            f"P4 worker {pid}: RSS {before / 1024:.1f} MiB after {first_count:.0f} fetches, "
            f"{after / 1024:.1f} MiB after {done:.0f}: {growth:+.1%} (goal within 10%) "
            f"{'OK' if abs(growth) <= 0.10 else 'MISSED'}"
        )
    if not args.no_profile:
        print("\ncProfile of the access-token hot path (in-process, test client, by tottime):")
        print(profile_hot_path(token, grant_id))


if __name__ == "__main__":
    main()
