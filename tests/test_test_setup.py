"""`make test` without Redis stops at once with the command that starts it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_without_redis_the_run_stops_at_once_with_the_command_to_start_it():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "tests/ops/test_logging.py",
            "tests/crypto/test_crypto.py",
        ],
        cwd=ROOT,
        env={**os.environ, "REDIS_URL": f"redis://127.0.0.1:{dead_port}/9"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 3, output
    assert f"Redis is not answering at redis://127.0.0.1:{dead_port}/9" in output
    assert f"redis-server --daemonize yes --bind 127.0.0.1 --port {dead_port}" in output
    assert "passed" not in output and "failed" not in output  # no test ran
    assert time.monotonic() - started < 30
