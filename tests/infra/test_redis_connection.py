"""The broker's Redis clients, against the real Redis."""

from __future__ import annotations

import runpy
import threading
import uuid
from pathlib import Path

from broker.infra.redis_connection import redis_client

GUNICORN_CONF = Path(__file__).resolve().parents[2] / "gunicorn.conf.py"


def test_a_client_runs_a_command_on_every_thread_of_a_web_process_at_once():
    """Every thread of a web process (gunicorn.conf.py) may be in a Redis command at the same
    moment, e.g. a burst of callers answered when their refresh ends: none may be refused
    for want of a connection (redis-py's default pool stopped at 100)."""
    threads = runpy.run_path(str(GUNICORN_CONF))["threads"] + 10
    key = f"test:nobody-pushes:{uuid.uuid4()}"
    started, refused = threading.Barrier(threads), []

    def one_command() -> None:
        started.wait()
        try:
            redis_client().blpop([key], timeout=0.2)  # holds its connection meanwhile
        except Exception as exc:
            refused.append(type(exc).__name__)

    running = [threading.Thread(target=one_command) for _ in range(threads)]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join()
    assert refused == []
