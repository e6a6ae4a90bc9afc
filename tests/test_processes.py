"""tests.processes, which the tests, the smoke run and the drills start and stop their
servers and workers with: every process it started ends, however stubborn."""

from __future__ import annotations

import os
import sys
import time

import pytest

from tests import processes

IGNORES_SIGTERM = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('up', flush=True)\n"
    "time.sleep(60)\n"
)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_its_output_goes_to_the_log_and_the_wait_ends_when_it_answers(tmp_path):
    log = tmp_path / "p.log"
    process = processes.start([sys.executable, "-c", IGNORES_SIGTERM], log)
    try:
        took = processes.wait_until(lambda: b"up" in log.read_bytes(), 20, "up", process=process)
        assert took < 20
    finally:
        processes.stop(process, timeout=0.5)


def test_a_process_ignoring_sigterm_is_killed_after_the_timeout(tmp_path):
    log = tmp_path / "p.log"
    process = processes.start([sys.executable, "-c", IGNORES_SIGTERM], log)
    processes.wait_until(lambda: b"up" in log.read_bytes(), 20, "up", process=process)
    started = time.monotonic()
    processes.stop(process, timeout=1)
    assert process.returncode == -9  # SIGKILL, after the SIGTERM was ignored
    assert 1 <= time.monotonic() - started < 10


def test_a_group_stop_kills_the_children_that_outlive_their_parent(tmp_path):
    log = tmp_path / "p.log"
    spawn = (
        "import subprocess, sys\n"
        f"child = subprocess.Popen([sys.executable, '-c', {IGNORES_SIGTERM!r}])\n"
        "print(child.pid, flush=True)\n"
        "child.wait()\n"
    )
    parent = processes.start([sys.executable, "-c", spawn], log, own_session=True)
    processes.wait_until(lambda: "up" in log.read_text(), 20, "the child")  # pid, then "up"
    child = int(log.read_text().split()[0])
    processes.stop(parent, timeout=1, group=True)
    processes.wait_until(lambda: not alive(child), 5, "the child to be gone")


def test_a_process_that_exits_ends_the_wait_at_once(tmp_path):
    log = tmp_path / "p.log"
    process = processes.start([sys.executable, "-c", "raise SystemExit(3)"], log)
    started = time.monotonic()
    with pytest.raises(processes.NotReady, match="exited with 3"):
        processes.wait_until(lambda: False, 30, "never", process=process, log_file=log)
    assert time.monotonic() - started < 10


def test_only_the_named_exceptions_count_as_not_yet():
    def fails() -> bool:
        raise KeyError("boom")

    with pytest.raises(KeyError):
        processes.wait_until(fails, 1, "x")
    with pytest.raises(processes.NotReady, match="last: KeyError"):
        processes.wait_until(fails, 0.3, "x", ignoring=(KeyError,))
