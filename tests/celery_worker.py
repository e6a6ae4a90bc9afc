"""Real Celery workers for tests: `celery -A broker worker` in a subprocess on this test
run's database and Redis, and a bounded wait for what it should do."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.sandbox_grants import PROJECT_ROOT, subprocess_env


def start_worker(log_file: Path, **env: str) -> subprocess.Popen:
    """One solo-pool worker (the task runs in the process a test may kill); returns once it
    is ready to take tasks. Its output goes to `log_file`."""
    with log_file.open("ab") as log:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "broker",
                "worker",
                "--pool=solo",
                "--loglevel=INFO",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                f"--hostname=test-{os.getpid()}-{time.monotonic_ns()}@localhost",
            ],
            cwd=PROJECT_ROOT,
            env=subprocess_env(**env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    wait_for(lambda: b" ready." in log_file.read_bytes(), 60, f"worker start; see {log_file}")
    return worker


def stop_worker(worker: subprocess.Popen) -> None:
    if worker.poll() is None:
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
