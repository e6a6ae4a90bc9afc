"""The one way the tests, the production smoke run (scripts/smoke_production.py) and the
drills (benchmarks/drills) run servers and workers: a subprocess with its output in a log
file, a bounded wait until it answers, and a stop by its pid (SIGTERM, then SIGKILL when
it takes longer than the timeout). Plain Python, no Django or pytest, so scripts can use it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import requests

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class NotReady(RuntimeError):
    """What was waited for did not happen in time (or its process exited first)."""


def start(
    args: Sequence[str],
    log_file: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path = PROJECT_ROOT,
    own_session: bool = False,
) -> subprocess.Popen[bytes]:
    """Starts `args` with stdout and stderr appended to `log_file`. `own_session` puts it in
    a process group of its own, so `stop(..., group=True)` reaches its children too."""
    with log_file.open("ab") as log:
        return subprocess.Popen(
            list(args),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=own_session,
        )


def python_output(code: str, env: Mapping[str, str], timeout: float = 60) -> str:
    """Runs `code` in a fresh interpreter of this checkout (`python -c`, from the project
    root) with exactly `env`; returns the last line it printed. Raises AssertionError with
    the end of its stderr when it fails."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def celery(*args: str) -> list[str]:
    """The command of `celery -A broker *args` (worker, beat, inspect) of this checkout."""
    return [sys.executable, "-m", "celery", "-A", "broker", *args]


def celery_worker(hostname: str, *, loglevel: str = "INFO") -> list[str]:
    """The command of one solo-pool worker of this checkout (the task runs in the process a
    test may kill), without the chatter between workers that tests and benchmarks do not
    need. `hostname` tells workers apart (`name@localhost`)."""
    return celery(
        "worker",
        "--pool=solo",
        f"--loglevel={loglevel}",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        f"--hostname={hostname}@localhost",
    )


def redis_server(port: int, directory: Path) -> list[str]:
    """The command of a throwaway redis-server on 127.0.0.1:`port`: nothing saved to disk,
    its working files in `directory`."""
    return [
        "redis-server",
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(directory),
    ]


def wait_until(
    condition: Callable[[], object],
    seconds: float,
    what: str,
    *,
    process: subprocess.Popen[bytes] | None = None,
    log_file: Path | None = None,
    ignoring: tuple[type[Exception], ...] = (),
    interval: float = 0.1,
) -> float:
    """Polls `condition` until it is true; returns the seconds that took. Exceptions in
    `ignoring` count as "not yet" (a server still starting answers with anything). Raises
    NotReady after `seconds`, or as soon as `process` has exited."""
    started = time.monotonic()
    last_error = ""
    while True:
        try:
            if condition():
                return time.monotonic() - started
        except ignoring as exc:
            last_error = f" (last: {type(exc).__name__}: {exc})"
        where = f"; see {log_file}" if log_file else ""
        if process is not None and process.poll() is not None:
            raise NotReady(f"exited with {process.returncode} before {what}{where}")
        if time.monotonic() - started > seconds:
            raise NotReady(f"timed out after {seconds:.0f}s waiting for {what}{last_error}{where}")
        time.sleep(interval)


@contextmanager
def running(
    args: Sequence[str],
    log_file: Path,
    ready: Callable[[], object],
    what: str,
    *,
    env: Mapping[str, str] | None = None,
    seconds: float = 60,
    stop_timeout: float = 20,
) -> Iterator[subprocess.Popen[bytes]]:
    """`args` started (`start`), waited for until `ready` (`wait_until`, `what` naming it),
    and stopped by its pid (`stop`) when the block ends, however it ends."""
    process = start(args, log_file, env=env)
    try:
        wait_until(ready, seconds, what, process=process, log_file=log_file)
        yield process
    finally:
        stop(process, timeout=stop_timeout)


def answers(url: str, timeout: float = 2) -> bool:
    """Whether `url` answers 200 to a GET."""
    try:
        return requests.get(url, timeout=timeout).status_code == 200
    except requests.RequestException:  # not listening yet, or still loading
        return False


def listening(host: str, port: int) -> bool:
    """Whether something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def stop(process: subprocess.Popen[bytes], timeout: float = 20, *, group: bool = False) -> None:
    """SIGTERM to the process (a graceful stop: gunicorn's master and Celery's main process
    let their children finish), SIGKILL after `timeout`. With `group` (a process started
    with `own_session`), the SIGKILL goes to its whole group, and children that outlived
    their parent are killed as well."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        if group:
            _kill_group(process)
        else:
            process.kill()
        process.wait(timeout=10)
    if group:
        _kill_group(process)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
