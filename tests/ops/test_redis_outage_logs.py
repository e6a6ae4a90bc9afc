"""A Redis outage is a few structured lines in the worker's and beat's logs, not a screen of
tracebacks: a worker and a beat on a Redis of their own (a redis-server on a free loopback
port), that Redis killed for 13 s, then started again; and the log filter that makes it so."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis.exceptions
from django.conf import settings

from broker.ops.logging_config import logging_settings
from tests import processes
from tests.sandbox_grants import subprocess_env as processes_env
from tests.sandbox_server import free_port

REDIS_SERVER = shutil.which("redis-server")


def start_redis(port: int, directory: Path) -> subprocess.Popen[bytes]:
    server = processes.start(processes.redis_server(port, directory), directory / "redis.log")
    processes.wait_until(lambda: processes.listening("127.0.0.1", port), 20, "redis-server")
    return server


@pytest.mark.slow
@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
@pytest.mark.django_db(transaction=True)
def test_a_redis_outage_is_a_few_lines_without_tracebacks(tmp_path: Path):
    port = free_port()
    redis_url = f"redis://127.0.0.1:{port}/0"
    redis_server = start_redis(port, tmp_path)
    env = {
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": redis_url,
        "LOG_FORMAT": "json",
        # beat sends every second: more to fail while Redis is away
        "BROKER_REFRESH_BEAT_SECONDS": "1",
    }
    worker_log, beat_log = tmp_path / "worker.log", tmp_path / "beat.log"
    started: list[subprocess.Popen[bytes]] = []
    try:
        # As the README runs it: the prefork pool, gossip, mingle and heartbeats.
        worker = processes.start(
            processes.celery("worker", "--loglevel=INFO", f"--hostname=outage-{port}@localhost"),
            worker_log,
            env=processes_env(**env),
        )
        started.append(worker)
        processes.wait_until(
            lambda: b" ready." in worker_log.read_bytes(), 60, "the worker", process=worker
        )
        beat = processes.start(
            processes.celery("beat", "--loglevel=INFO", "-s", str(tmp_path / "beat-schedule")),
            beat_log,
            env=processes_env(**env),
        )
        started.append(beat)
        time.sleep(6)  # beat sends its first tasks, the worker runs them
        before = {log: len(log.read_text().splitlines()) for log in (worker_log, beat_log)}
        redis_server.kill()  # SIGKILL: connections drop mid-command, as when a host dies
        redis_server.wait()
        time.sleep(13)
        redis_server = start_redis(port, tmp_path)
        time.sleep(12)  # both reconnect; beat's tasks flow again
        assert worker.poll() is None and beat.poll() is None
        during = {log: log.read_text().splitlines()[before[log] :] for log in before}
    finally:
        for process in [*started, redis_server]:
            processes.stop(process)

    for log, lines in during.items():
        assert len(lines) < 30, f"{log.name}: {len(lines)} lines"
        assert not [line for line in lines if "Traceback" in line or "exception" in line]
        records = [json.loads(line) for line in lines]  # one JSON object per line
        assert any(r["level"] in ("WARNING", "ERROR") for r in records)  # the outage is told


def failure(exc: BaseException, context: BaseException | None = None) -> tuple:
    try:
        try:
            raise context or ValueError("no context")
        except BaseException:
            raise exc  # noqa: B904 (its context is the point)
    except BaseException:
        return sys.exc_info()


def written(records: list[logging.LogRecord]) -> list[str]:
    """What the project's handler (its filters, the plain format) writes for `records`."""
    config = logging_settings("INFO", "plain")
    logging.config.dictConfig(config)
    try:
        (handler,) = logging.getLogger().handlers
        buffer = io.StringIO()
        handler.setStream(buffer)  # type: ignore[attr-defined]
        for record in records:
            logging.getLogger(record.name).handle(record)
        return buffer.getvalue().splitlines()
    finally:
        logging.config.dictConfig(settings.LOGGING)


def record(name: str, level: int, msg: str, args: tuple = (), exc_info=None) -> logging.LogRecord:
    return logging.getLogger(name).makeRecord(name, level, "x.py", 1, msg, args, exc_info)


def test_celery_errors_caused_by_a_lost_connection_are_one_line_once_per_minute():
    lost = redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379.")
    # Celery's own AttributeError while it restarts Gossip after the connection died.
    internal = failure(AttributeError("'NoneType' object has no attribute 'x'"), lost)
    records = [
        record(
            "celery.bootsteps",
            logging.ERROR,
            "Error on restarting %s: %r",
            ("Gossip", internal[1]),
            internal,
        )
        for _ in range(5)
    ] + [
        record(
            "celery.beat",
            logging.ERROR,
            "Message Error: %s\n%s",
            (lost, "['  File \"x\"']"),
            failure(lost),
        )
        for _ in range(20)
    ]

    lines = written(records)

    assert len(lines) == 2
    assert "Error on restarting Gossip" in lines[0] and "Error 111" in lines[0]
    assert lines[1].endswith("Message Error: Error 111 connecting to 127.0.0.1:6379.")
    assert not [line for line in lines if "Traceback" in line or "File" in line]


def test_other_errors_keep_their_traceback_and_are_not_left_out():
    bug = failure(KeyError("grant"))
    lines = written([record("broker.refresh", logging.ERROR, "refresh failed", (), bug)] * 3)
    assert sum(" ERROR broker.refresh refresh failed" in line for line in lines) == 3
    assert sum(line == "KeyError: 'grant'" for line in lines) == 3
