"""The broker under gunicorn with gunicorn.conf.py, as deployed, on this test run's
database and Redis (tests.sandbox_grants.subprocess_env), on a free loopback port."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests import processes
from tests.sandbox_grants import subprocess_env
from tests.sandbox_server import free_port


@contextmanager
def gunicorn(log_file: Path, **env: str) -> Iterator[str]:
    """Runs gunicorn (from the working directory, so it reads gunicorn.conf.py) with `env`
    on top of the test's environment; yields its URL, stops it afterwards."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = processes.start(
        [str(Path(sys.executable).parent / "gunicorn"), "--bind", f"127.0.0.1:{port}"],
        log_file,
        env=subprocess_env(**env),
    )
    try:
        processes.wait_until(
            lambda: processes.answers(f"{url}/healthz"),
            60,
            "gunicorn to answer",
            process=process,
            log_file=log_file,
        )
        yield url
    finally:
        processes.stop(process, timeout=20)
