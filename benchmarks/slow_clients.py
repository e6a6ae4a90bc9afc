"""Slow clients against the web process, with and without the front server (printed
figures; a scaled-down run is a test: tests/ops/test_slow_clients.py).

Starts gunicorn with gunicorn.conf.py as it is (production settings, loopback HTTP, SQLite
in a temporary directory: /healthz touches neither the database nor Redis) and nginx with
deploy/nginx.conf as it is on loopback ports (tests/front_server.py), then, once through
nginx and once straight to gunicorn (the baseline), opens CONNECTIONS slow connections,
each sending its request one header byte every 0.5-3.5 s and opening a new one when the
server closes it, and meanwhile sends GET /healthz every 100 ms for SECONDS. Prints the
probes answered (200 within 5 s) and their p50 and p99. Bounded: every phase ends after
its time, everything started is stopped by its pid.

    .venv/bin/python benchmarks/slow_clients.py [--connections 2000] [--seconds 20]

Needs nginx (apt-get install nginx-light) and as many file descriptors as connections,
twice over (raised here up to the hard limit).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import multiprocessing
import os
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import front_server, processes  # noqa: E402
from tests.sandbox_server import free_port  # noqa: E402

HOST = "127.0.0.1"
# A request that is never finished: each connection sends one more byte of it now and then.
SLOW_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 8000
PROBE = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
PROBE_INTERVAL = 0.1
PROBE_TIMEOUT = 5.0
BYTE_PAUSE = (0.5, 3.5)
# The slow connections open over this many seconds, and are all open before probing starts.
RAMP_SECONDS = 2.0
SETTLE_SECONDS = 3.0


@dataclass
class Phase:
    """What one run of slow clients and probes saw."""

    target: str
    connections: int
    probes_sent: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, of the answered probes
    slow_opened: int = 0
    slow_closed_by_server: int = 0
    slow_refused: int = 0

    @property
    def answered(self) -> int:
        return len(self.latencies)

    def percentile_ms(self, fraction: float) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    def summary(self) -> str:
        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:.0f} ms"

        median = statistics.median(self.latencies) * 1000 if self.latencies else None
        return (
            f"{self.target}: {self.connections} slow connections; /healthz probes answered "
            f"{self.answered}/{self.probes_sent}, p50 {ms(median)}, "
            f"p99 {ms(self.percentile_ms(0.99))}, max {ms(self.percentile_ms(1.0))}; "
            f"slow connections opened {self.slow_opened}, closed by the server "
            f"{self.slow_closed_by_server}, refused {self.slow_refused}"
        )


def raise_file_limit() -> int:
    """The soft limit of open files raised to the hard one (servers started from here
    inherit it); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass
class SlowLoad:
    """What the slow clients saw."""

    opened: int = 0
    closed_by_server: int = 0
    refused: int = 0


async def _slow_connection(port: int, start_at: float, end_at: float, load: SlowLoad) -> None:
    """One slow client until `end_at`: a byte every 0.5-3.5 s; a new connection whenever
    the server closes this one (a 408, a reset)."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, start_at - loop.time()))
    while loop.time() < end_at:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 5)
        except OSError:  # refused, reset, or TimeoutError
            load.refused += 1
            await asyncio.sleep(random.uniform(*BYTE_PAUSE))
            continue
        load.opened += 1
        closed = asyncio.ensure_future(reader.read(65536))  # an answer or EOF: closed
        try:
            for offset in range(len(SLOW_REQUEST)):
                pause = min(random.uniform(*BYTE_PAUSE), max(0.0, end_at - loop.time()))
                await asyncio.wait({closed}, timeout=pause)
                if closed.done() or loop.time() >= end_at:
                    break
                writer.write(SLOW_REQUEST[offset : offset + 1])
        finally:
            if closed.done() and not closed.cancelled():
                load.closed_by_server += 1
            closed.cancel()
            writer.close()


async def _slow_clients(port: int, connections: int, end_at: float) -> SlowLoad:
    load = SlowLoad()
    now = asyncio.get_running_loop().time()
    clients = [
        asyncio.ensure_future(
            _slow_connection(port, now + random.uniform(0, RAMP_SECONDS), end_at, load)
        )
        for _ in range(connections)
    ]
    # Each client ends at end_at, or at its next pause.
    await asyncio.wait(clients, timeout=max(0.0, end_at - now) + max(BYTE_PAUSE) + 5)
    for client in clients:
        client.cancel()
    return load


def _run_slow_clients(port: int, connections: int, end_at: float, results: Connection) -> None:
    """The slow clients' process (their own event loop: a wave of reconnections there does
    not delay the probes); sends its SlowLoad back."""
    raise_file_limit()
    results.send(asyncio.run(_slow_clients(port, connections, end_at)))


async def _probe(port: int, phase: Phase) -> None:
    """One GET /healthz on a connection of its own; its time counts if a 200 came in time."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    phase.probes_sent += 1

    async def exchange() -> bytes:
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            writer.write(PROBE)
            return await reader.readline()
        finally:
            writer.close()

    try:
        status_line = await asyncio.wait_for(exchange(), PROBE_TIMEOUT)
    except OSError:  # refused, reset, or TimeoutError
        return
    if status_line.split(b" ")[1:2] == [b"200"]:
        phase.latencies.append(loop.time() - started)


async def _probes(port: int, phase: Phase, probing_from: float, end_at: float) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, probing_from - loop.time()))
    probes = []
    while loop.time() < end_at:
        probes.append(asyncio.ensure_future(_probe(port, phase)))
        await asyncio.sleep(PROBE_INTERVAL)
    await asyncio.wait(probes, timeout=PROBE_TIMEOUT + 1)  # each ends within its timeout
    for probe in probes:
        probe.cancel()


def measure(target: str, port: int, connections: int, seconds: float) -> Phase:
    """CONNECTIONS slow clients at 127.0.0.1:`port` (in a process of their own), and
    /healthz probed every 100 ms from this one for `seconds` once they are all open;
    bounded by about seconds + 15 s."""
    phase = Phase(target, connections)
    # asyncio's clock is time.monotonic(), the same in both processes.
    probing_from = time.monotonic() + RAMP_SECONDS + SETTLE_SECONDS
    end_at = probing_from + seconds
    receiving, sending = multiprocessing.Pipe(duplex=False)
    clients = multiprocessing.get_context("spawn").Process(
        target=_run_slow_clients, args=(port, connections, end_at, sending), daemon=True
    )
    clients.start()
    try:
        asyncio.run(_probes(port, phase, probing_from, end_at))
        if receiving.poll(max(0.0, end_at - time.monotonic()) + max(BYTE_PAUSE) + 10):
            load: SlowLoad = receiving.recv()
            phase.slow_opened = load.opened
            phase.slow_closed_by_server = load.closed_by_server
            phase.slow_refused = load.refused
    finally:
        clients.join(timeout=10)
        if clients.is_alive():
            clients.kill()
            clients.join()
    return phase


def broker_env(workdir: Path) -> dict[str, str]:
    """Production settings on loopback HTTP, nothing read from a developer's .env."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", str(workdir)),
        "LANG": "C.UTF-8",
        "DJANGO_SETTINGS_MODULE": "broker.settings",
        "BROKER_ENV_FILE": "",
        "DEBUG": "0",
        "BROKER_ALLOW_HTTP": "1",
        "SECRET_KEY": "slow-clients-benchmark-" + "x" * 40,
        "BROKER_ENCRYPTION_KEYS": "bench:" + base64.b64encode(b"s" * 32).decode(),
        "BROKER_PUBLIC_URL": f"http://{HOST}",
        "ALLOWED_HOSTS": HOST,
        "BROKER_DATA_DIR": str(workdir / "data"),
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/12"),
        "BROKER_TRUSTED_PROXIES": "1",
        "LOG_LEVEL": "WARNING",
    }


@contextmanager
def web_behind_front_server(workdir: Path) -> Iterator[tuple[int, int]]:
    """gunicorn (gunicorn.conf.py) and nginx (deploy/nginx.conf) in front of it, both on
    free loopback ports; yields (gunicorn's port, nginx's port), stops both by pid."""
    web_port, front_port = free_port(), free_port()
    started = []
    try:
        web = processes.start(
            [str(Path(sys.executable).parent / "gunicorn"), "--bind", f"{HOST}:{web_port}"],
            workdir / "gunicorn.log",
            env=broker_env(workdir),
        )
        started.append(web)
        processes.wait_until(
            lambda: processes.answers(f"http://{HOST}:{web_port}/healthz"),
            60,
            "gunicorn to answer",
            process=web,
            log_file=workdir / "gunicorn.log",
        )
        front = front_server.start(front_port, f"{HOST}:{web_port}", workdir / "nginx")
        started.append(front)
        processes.wait_until(
            lambda: processes.answers(f"http://{HOST}:{front_port}/healthz"),
            30,
            "nginx to answer",
            process=front,
            log_file=workdir / "nginx" / "error.log",
        )
        yield web_port, front_port
    finally:
        for process in reversed(started):
            processes.stop(process, timeout=20)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=20)
    options = parser.parse_args()
    limit = raise_file_limit()
    if limit < 2 * options.connections + 200:
        raise SystemExit(f"open files limited to {limit}: too few for the connections")
    workdir = Path(tempfile.mkdtemp(prefix="broker-slow-clients-"))
    try:
        with web_behind_front_server(workdir) as (web_port, front_port):
            print(f"gunicorn on {web_port}, nginx on {front_port}; files open at most {limit}")
            started = time.monotonic()
            front = measure("through nginx", front_port, options.connections, options.seconds)
            print(front.summary(), flush=True)
            time.sleep(2)
            direct = measure("straight to gunicorn", web_port, options.connections, options.seconds)
            print(direct.summary(), flush=True)
            print(f"took {time.monotonic() - started:.0f}s")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
