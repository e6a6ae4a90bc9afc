"""What the proxy adds: a proxied GET of a small sandbox resource against the same GET sent
straight to the sandbox, in the same run (printed figures, not a timed test).

    REDIS_URL=redis://127.0.0.1:6379/<db> python benchmarks/proxy.py [--calls 500]
        [--database-url postgres://postgres@127.0.0.1:5432/broker_bench_proxy]

Starts the sandbox (runserver, 1-hour tokens, test switches off) and the broker under
gunicorn (gunicorn.conf.py, one worker process) on loopback, stores a grant holding a real
sandbox token, then sends `--calls` pairs of requests one after the other, alternating
(a) `GET <sandbox>/ex/jira/<cloud id>/rest/api/3/myself` with the provider token and
(b) `GET <broker>/api/v1/proxy/sandbox/ex/jira/<cloud id>/rest/api/3/myself` with the
broker token and `Broker-Grant`, each over its own kept-alive connection. Prints p50 and
p99 of both, the latency the proxy adds (b - a at each percentile), and the broker's CPU
per proxied call (utime + stime of the gunicorn processes over the timed loop, from
/proc; only (b) reaches the broker). The broker's database is recreated on each run
(SQLite file data/bench-proxy.sqlite3 by default).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.measure import cpu_seconds, fresh_database, percentile  # noqa: E402

CLOUD_ID = "6f1c2a0e-5b7d-4c1e-9a4f-0d3e8b7a1c01"  # the sandbox's first site
RESOURCE = f"ex/jira/{CLOUD_ID}/rest/api/3/myself"
WARM_UP = 30


def process_tree(pid: int) -> list[int]:
    """`pid` and its children (gunicorn's master and workers)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return [pid, *children]


def start_broker(port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "WEB_CONCURRENCY": "1"}
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "gunicorn"), "--bind", f"127.0.0.1:{port}"],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    for _ in range(200):
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).ok:
                return process
        except requests.RequestException:  # not listening yet, or still loading Django
            time.sleep(0.1)
    process.kill()
    raise SystemExit(f"gunicorn did not start; see {log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--database-url", default=None)
    parser.add_argument(
        "--profile", action="store_true", help="also print a cProfile of proxied calls in-process"
    )
    args = parser.parse_args()

    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"  # fixed keys, HTTP allowed
    os.environ["DATABASE_URL"] = fresh_database(args.database_url, "bench-proxy")
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/5")
    os.environ["LOG_LEVEL"] = "WARNING"

    import django

    django.setup()
    from django.core.management import call_command

    from accounts.models import User
    from broker.models import AccessRule, Grant, ProviderApp, ServiceClient
    from broker.service_identity import service_secrets
    from tests import sandbox_server
    from tests.sandbox_grants import connect_grant

    call_command("migrate", verbosity=0)
    work = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    plain_env = sandbox_server.sandbox_env

    def quiet_sandbox_env(*env_args: object) -> dict[str, str]:
        # No request counting: one database write per request would be measured too.
        return {**plain_env(*env_args), "SANDBOX_TEST_SWITCHES": "0"}  # type: ignore[arg-type]

    sandbox_server.sandbox_env = quiet_sandbox_env  # type: ignore[assignment]
    broker_port = sandbox_server.free_port()
    broker_url = f"http://127.0.0.1:{broker_port}"
    os.environ["BROKER_PUBLIC_URL"] = broker_url
    from django.conf import settings

    settings.BROKER_PUBLIC_URL = broker_url
    sandbox = sandbox_server.start_sandbox(work, broker_url, access_token_seconds=3600)
    broker = None
    try:
        call_command("loadproviders", str(sandbox.providers_file), stdout=io.StringIO())
        user = User.objects.create_user("alice", password=None)
        grant = connect_grant(sandbox, user, slug="sandbox")
        service = ServiceClient.objects.create(client_id="bench-proxy", name="Bench proxy")
        secret = service_secrets.new_secret(service)
        AccessRule.objects.create(
            service=service, provider_app=ProviderApp.objects.get(slug="sandbox")
        )
        provider_token = Grant.objects.get(pk=grant.pk).unseal("access_token")

        broker = start_broker(broker_port, work / "gunicorn.log")
        answer = requests.post(
            f"{broker_url}/api/v1/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=(service.client_id, secret),
            timeout=10,
        )
        answer.raise_for_status()
        direct, proxied = requests.Session(), requests.Session()
        direct.headers["Authorization"] = f"Bearer {provider_token}"
        proxied.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"
        proxied.headers["Broker-Grant"] = str(grant.pk)
        direct_url = f"{sandbox.url}/{RESOURCE}"
        proxied_url = f"{broker_url}/api/v1/proxy/sandbox/{RESOURCE}"

        def timed(session: requests.Session, url: str) -> float:
            started = time.perf_counter()
            response = session.get(url, timeout=10)
            elapsed = time.perf_counter() - started
            if response.status_code != 200 or response.json()["accountId"] != "sandbox-alice":
                raise SystemExit(f"{url}: {response.status_code} {response.text[:200]}")
            return elapsed * 1000

        for _ in range(WARM_UP):
            timed(direct, direct_url)
            timed(proxied, proxied_url)
        pids = process_tree(broker.pid)
        cpu_before = sum(cpu_seconds(pid) for pid in pids)
        sandbox_cpu_before = cpu_seconds(sandbox.process.pid)
        straight: list[float] = []
        through: list[float] = []
        for _ in range(args.calls):
            straight.append(timed(direct, direct_url))
            through.append(timed(proxied, proxied_url))
        broker_cpu = sum(cpu_seconds(pid) for pid in pids) - cpu_before
        sandbox_cpu = cpu_seconds(sandbox.process.pid) - sandbox_cpu_before
        direct.close()
        proxied.close()
        profile = (
            profile_proxy(proxied.headers, f"/api/v1/proxy/sandbox/{RESOURCE}")
            if args.profile
            else ""
        )
    finally:
        if broker is not None:
            broker.terminate()
            broker.wait(timeout=30)
        sandbox.stop()

    print(
        f"{args.calls} pairs of GET /{RESOURCE}, sequential, alternating; broker: gunicorn "
        f"(1 worker), {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[1]}; "
        "sandbox: runserver"
    )
    for name, values in (
        ("(a) straight to the sandbox", straight),
        ("(b) through the proxy", through),
    ):
        print(
            f"  {name:28} p50 {percentile(values, 0.5):6.2f} ms  p99 "
            f"{percentile(values, 0.99):6.2f} ms  mean {statistics.mean(values):6.2f} ms"
        )
    print(
        f"added by the proxy: p50 {percentile(through, 0.5) - percentile(straight, 0.5):.2f} ms, "
        f"p99 {percentile(through, 0.99) - percentile(straight, 0.99):.2f} ms"
    )
    print(
        f"broker CPU per proxied call: {broker_cpu * 1000 / args.calls:.2f} ms "
        f"(sandbox CPU per request, both kinds: {sandbox_cpu * 1000 / (2 * args.calls):.2f} ms)"
    )
    if profile:
        print("\ncProfile of proxied calls (in-process, test client, top by own time):")
        print(profile)


def profile_proxy(headers: Any, path: str, calls: int = 200) -> str:
    """cProfile of the proxy view through the full middleware stack, in this process."""
    from django.test import Client

    client = Client(HTTP_HOST="127.0.0.1")
    meta = {f"HTTP_{name.upper().replace('-', '_')}": value for name, value in headers.items()}
    profiler = cProfile.Profile()
    for n in range(calls + 20):
        if n == 20:  # after the warm-up
            profiler.enable()
        response = client.get(path, **meta)
        assert response.status_code == 200, response
        b"".join(response.streaming_content)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
    return out.getvalue()


if __name__ == "__main__":
    main()
