"""P2: many callers on one refresh (printed figures, not a timed test).

    .venv/bin/python benchmarks/refresh_waiters.py [--callers 200] [--delay 2]
        [--database-url postgres://postgres@127.0.0.1:5432/broker_bench_waiters]

Starts the sandbox provider and the broker under gunicorn (gunicorn.conf.py as it is; set
WEB_CONCURRENCY / GUNICORN_THREADS to try others), stores one grant holding real sandbox
tokens, slows the sandbox's token endpoint to `--delay` seconds, then writes `--callers`
`POST /api/v1/access-token` with `force_refresh` for that grant at once, on connections
opened and used once beforehand (an asyncio client: its own CPU neither spreads the
requests nor delays the answers; each answer is timed from its own request's write).
Prints the upstream refresh calls the sandbox counted (goal: exactly 1), the answers
(goal: all 200 with one and the same new token), the latency beyond the upstream delay
(goal: p99 <= 10% of the delay), the latency beyond the refresh's own duration (what the
broker adds), and the web workers' CPU per caller before and after. REDIS_URL picks the
Redis database (default 13); the database is recreated (SQLite file
data/bench-waiters.sqlite3 by default).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.measure import cpu_seconds, fresh_database, percentile  # noqa: E402


@dataclass(frozen=True)
class Answer:
    status: int
    token: str  # a digest of the access token, or the start of an error's body
    sent: float  # time.monotonic() when its request was written to its socket
    done: float  # when the last byte of its answer was read


def request(port: int, token: str, body: str) -> bytes:
    return (
        f"POST /api/v1/access-token HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes
) -> Answer:
    sent = time.monotonic()
    writer.write(raw)
    return await answer(reader, sent)


async def answer(reader: asyncio.StreamReader, sent: float) -> Answer:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    body = await reader.readexactly(length)
    done = time.monotonic()
    if status == 200:
        digest = hashlib.sha256(json.loads(body)["access_token"].encode()).hexdigest()[:12]
    else:
        digest = body[:80].decode(errors="replace")
    return Answer(status, digest, sent, done)


async def burst(
    port: int,
    warm: bytes,
    forced: bytes,
    callers: int,
    before_burst: Callable[[], object],
    midway: tuple[float, Callable[[], object]],
) -> list[Answer]:
    """Opens `callers` connections and fetches once on each (no refresh: every worker
    thread and database connection warm, each connection kept alive by gunicorn), then
    writes the `forced` request on every connection, one after the other (a few ms for
    all: the client's own CPU neither delays a request nor its answer's time), and reads
    the answers. Each answer's latency is measured from when its own request was written.
    `midway`: (seconds, what to call that long after the requests were sent)."""
    connections = await asyncio.gather(
        *(asyncio.open_connection("127.0.0.1", port) for _ in range(callers))
    )
    warmed = await asyncio.gather(*(exchange(r, w, warm) for r, w in connections))
    if any(a.status != 200 for a in warmed):
        raise SystemExit(f"warm-up fetch failed: {warmed[0]}")
    before_burst()
    asyncio.get_running_loop().call_later(*midway)
    sent = []
    for _, writer in connections:
        sent.append(time.monotonic())
        writer.write(forced)
    try:
        # As long as the broker's longest request (gunicorn.conf.py's timeout).
        async with asyncio.timeout(60):
            return await asyncio.gather(
                *(answer(reader, at) for (reader, _), at in zip(connections, sent, strict=True))
            )
    finally:
        for _, writer in connections:
            writer.close()


def connections_per_worker(port: int) -> list[int]:
    """How many of the client's connections each gunicorn worker holds (from `ss`): a
    worker given more than its threads queues the excess, whose callers start late."""
    lines = subprocess.run(
        ["ss", "-Htnp", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()
    counts: dict[str, int] = {}
    for line in lines:
        pid = line.split("pid=", 1)[1].split(",", 1)[0] if "pid=" in line else "?"
        counts[pid] = counts.get(pid, 0) + 1
    return sorted(counts.values(), reverse=True)


def workers_cpu(pid: int) -> float:
    """CPU seconds used so far by gunicorn's worker processes (children of `pid`)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return sum(cpu_seconds(int(child)) for child in children)


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
    from broker.infra.redis_connection import redis_client
    from broker.models import AccessRule, Grant, ProviderApp, ServiceClient
    from broker.ops import metrics
    from broker.service_identity import service_secrets
    from tests.sandbox_server import (
        free_port,
        mint_tokens,
        sandbox_env,
        start_sandbox,
        store_minted,
    )

    call_command("migrate", verbosity=0)
    redis_client().flushdb()  # the benchmark's own database
    work = Path(tempfile.mkdtemp(prefix="bench-waiters-"))
    sandbox = start_sandbox(work, "http://localhost:8000", access_token_seconds=3600)
    server = None
    try:
        call_command("loadproviders", str(sandbox.providers_file), verbosity=0)
        app = ProviderApp.objects.get(slug="sandbox")
        env = sandbox_env(work, int(urlparse(sandbox.url).port or 0), 3600)
        [minted] = mint_tokens(env, work / "tokens.json", app.client_id, 1)
        user = User.objects.create_user("bench", password=None)
        grant = Grant(user=user, provider_app=app, external_account_id="bench")
        store_minted(grant, minted)
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
        warm_body = json.dumps({"grant": str(grant.pk)})
        burst_body = json.dumps({"grant": str(grant.pk), "force_refresh": True})
        cpu: list[float] = []  # the web workers' CPU seconds: before, midway, after
        spread: list[int] = []  # the client's connections per web worker
        web = server.pid

        def before_burst() -> None:
            sandbox.faults(mode="slow", delay=args.delay)
            sandbox.reset_counters()
            cpu.append(workers_cpu(web))
            spread.extend(connections_per_worker(port))

        answers = asyncio.run(
            burst(
                port,
                request(port, token, warm_body),
                request(port, token, burst_body),
                args.callers,
                before_burst=before_burst,
                midway=(args.delay * 0.75, lambda: cpu.append(workers_cpu(web))),
            )
        )
        cpu.append(workers_cpu(server.pid))
        # The one refresh's own time (the upstream call and its write), as the broker
        # counted it: what the sandbox adds to the delay is not the broker's doing.
        refresh_seconds = float(
            redis_client().hget(metrics.metrics_key(metrics.REFRESH_SECONDS), "sum") or 0
        )
        sandbox.faults(mode="none")
        upstream = sandbox.counters()["token"].get("refresh_token", 0)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        sandbox.stop()

    ok = [a for a in answers if a.status == 200]
    tokens = {a.token for a in ok}
    beyond = [max(0.0, a.done - a.sent - args.delay) * 1000 for a in answers]
    failures: dict[str, int] = {}
    for a in answers:
        if a.status != 200:
            failures[f"{a.status} {a.token}"] = failures.get(f"{a.status} {a.token}", 0) + 1
    print(
        f"gunicorn.conf.py (WEB_CONCURRENCY={os.environ.get('WEB_CONCURRENCY', os.cpu_count())}, "
        f"GUNICORN_THREADS={os.environ.get('GUNICORN_THREADS', 'default')}), "
        f"{args.callers} callers, upstream delay {args.delay:g} s, "
        f"{django.conf.settings.DATABASES['default']['ENGINE']}"
    )
    print(f"P2 upstream refresh calls: {upstream} (goal 1) {'OK' if upstream == 1 else 'MISSED'}")
    verdict = "OK" if len(ok) == args.callers and len(tokens) == 1 else "MISSED"
    print(
        f"P2 answers: {len(ok)}/{args.callers} HTTP 200, with {len(tokens)} distinct token(s) "
        f"(goal all, one token) {verdict}"
    )
    for failure, count in sorted(failures.items()):
        print(f"   {count} x {failure}")
    print(f"   connections per web worker: {'/'.join(map(str, spread))}")
    first = min(a.sent for a in answers)
    print(
        f"   requests sent within {(max(a.sent for a in answers) - first) * 1000:.1f} ms; "
        f"answers from {(min(a.done for a in answers) - first) * 1000:.0f} to "
        f"{(max(a.done for a in answers) - first) * 1000:.0f} ms after the first was sent"
    )
    beyond_refresh = [(a.done - a.sent - refresh_seconds) * 1000 for a in answers]
    print(
        f"   the refresh took {refresh_seconds * 1000:.0f} ms (upstream call and write); "
        f"answers beyond it: p50 {percentile(beyond_refresh, 0.5):.0f} ms, "
        f"p99 {percentile(beyond_refresh, 0.99):.0f} ms"
    )
    before, midway, after = cpu
    print(
        f"   web workers' CPU per caller: {(midway - before) * 1000 / args.callers:.2f} ms until "
        f"{args.delay * 0.75:g} s (the requests, up to their wait), "
        f"{(after - midway) * 1000 / args.callers:.2f} ms after (the answers)"
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
