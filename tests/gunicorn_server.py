"""The broker under gunicorn with gunicorn.conf.py, as deployed, on this test run's
database and Redis (tests.sandbox_grants.subprocess_env), on a free loopback port."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from tests.sandbox_grants import PROJECT_ROOT, subprocess_env
from tests.sandbox_server import free_port


def answers(url: str) -> bool:
    try:
        return requests.get(f"{url}/healthz", timeout=2).status_code == 200
    except requests.RequestException:  # not listening yet, or still loading Django
        return False


@contextmanager
def gunicorn(log_file: Path, **env: str) -> Iterator[str]:
    """Runs gunicorn (from the working directory, so it reads gunicorn.conf.py) with `env`
    on top of the test's environment; yields its URL, stops it afterwards."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "gunicorn"), "--bind", f"127.0.0.1:{port}"],
            cwd=PROJECT_ROOT,
            env=subprocess_env(**env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while not answers(url):
            assert process.poll() is None, f"gunicorn exited:\n{log_file.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"gunicorn did not answer; see {log_file}"
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
