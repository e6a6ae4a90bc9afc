"""Real Celery workers for tests: `celery -A broker worker` in a subprocess on this test
run's database and Redis, and a bounded wait for what it should do."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from tests import processes
from tests.processes import wait_until
from tests.sandbox_grants import subprocess_env


def start_worker(log_file: Path, **env: str) -> subprocess.Popen[bytes]:
    """One worker on this test run's database and Redis; returns once it is ready to take
    tasks. Its output goes to `log_file`."""
    hostname = f"test-{os.getpid()}-{time.monotonic_ns()}"
    worker = processes.start(processes.celery_worker(hostname), log_file, env=subprocess_env(**env))
    wait_until(
        lambda: b" ready." in log_file.read_bytes(),
        60,
        "the worker to start",
        process=worker,
        log_file=log_file,
    )
    return worker


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    processes.stop(worker, timeout=20)
