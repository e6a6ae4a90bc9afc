"""The README's `celery -A broker worker` and `celery -A broker beat`, typed as they are:
the worker logs each task run at INFO, and beat writes nothing into the checkout."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.celery import app
from tests import processes
from tests.processes import wait_until
from tests.sandbox_grants import subprocess_env

ROOT = Path(__file__).resolve().parents[2]


def test_beats_schedule_file_is_not_in_the_checkout_by_default():
    # What `celery -A broker beat` without `-s` opens (celery.apps.beat.Beat).
    schedule = Path(app.Beat().schedule)

    assert schedule.is_absolute()  # a relative name lands in the working directory
    assert not schedule.resolve().is_relative_to(ROOT)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_worker_without_a_log_level_logs_each_task_run_at_info(tmp_path):
    # Celery's own default (`-l WARNING`), in the prefork pool's child that runs the task,
    # hid the broker's one line per task run.
    log_file = tmp_path / "worker.log"
    worker = processes.start(
        processes.celery("worker", "-c", "1")
        + ["-n", f"test-info-{tmp_path.name}@localhost", "--without-mingle", "--without-gossip"],
        log_file,
        env=subprocess_env(),
    )
    try:
        wait_until(
            lambda: b"Connected to" in log_file.read_bytes(),
            60,
            "the worker to connect",
            process=worker,
            log_file=log_file,
        )
        app.send_task("broker.consent.purge_expired_consent_state")
        wait_until(
            lambda: (
                b"INFO broker.task task broker.consent.purge_expired_consent_state"
                in log_file.read_bytes()
            ),
            30,
            "the worker's INFO line for the task run",
            process=worker,
            log_file=log_file,
        )
    finally:
        processes.stop(worker, timeout=20)
