"""Real Celery workers (`celery -A broker worker`) refreshing what the beat claimed,
including one killed with SIGKILL in the middle of its upstream call."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from django.utils import timezone

from broker.infra.redis_connection import redis_client
from broker.models import Grant
from broker.refresh import redis_keys, tasks
from broker.refresh.on_demand import ensure_fresh
from tests import celery_worker
from tests.celery_worker import stop_worker
from tests.processes import wait_until
from tests.sandbox_grants import (
    connect_grant,
    identity_works,
    refresh_count,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.sandbox, pytest.mark.slow]


def start_worker(log_file: Path, **env: str) -> subprocess.Popen:
    """Tasks other tests queued (notification emails) are dropped first."""
    redis_client().delete("celery")
    return celery_worker.start_worker(log_file, **env)


def wait_until_due(grant: Grant) -> None:
    wait_until(
        lambda: Grant.objects.get(pk=grant.pk).next_refresh_at <= timezone.now(), 30, "due grant"
    )


def version_of(grant: Grant) -> int:
    return Grant.objects.get(pk=grant.pk).token_version


def test_a_worker_refreshes_the_grants_the_beat_claimed(sandbox, sandbox_apps, owner, tmp_path):
    grant = connect_grant(sandbox, owner)
    worker = start_worker(tmp_path / "worker.log")
    try:
        wait_until_due(grant)
        before = refresh_count(sandbox)
        assert tasks.enqueue_due_refreshes() == 1
        wait_until(lambda: version_of(grant) == grant.token_version + 1, 30, "the refresh")
        # Checked at once: the sandbox's tokens live 2 s, less than a loaded worker's stop.
        refreshed = Grant.objects.get(pk=grant.pk)
        assert identity_works(sandbox, refreshed.unseal("access_token"))
    finally:
        stop_worker(worker)
    assert refresh_count(sandbox) == before + 1
    assert refreshed.status == Grant.Status.ACTIVE
    assert refreshed.refresh_enqueued_at is None
    assert refreshed.next_refresh_at > refreshed.last_refreshed_at


def test_a_worker_killed_during_the_upstream_call_leaves_a_grant_that_still_refreshes(
    reuse_window_apps, owner, tmp_path, settings
):
    sandbox = reuse_window_apps
    grant = connect_grant(sandbox, owner)
    settings.BROKER_REFRESH_CLAIM_TIMEOUT = 12
    worker_env = {"BROKER_PROVIDER_TIMEOUT": "5", "BROKER_REFRESH_LOCK_TIMEOUT": "8"}
    worker = start_worker(tmp_path / "first.log", **worker_env)
    lock_key = redis_keys.lock_key(grant.pk)
    try:
        wait_until_due(grant)
        before = refresh_count(sandbox)
        sandbox.faults(mode="slow", delay=4, times=1)
        assert tasks.enqueue_due_refreshes() == 1
        # The worker holds the lock and its request is at the provider: kill it there.
        wait_until(lambda: refresh_count(sandbox) == before + 1, 30, "the upstream call")
        assert redis_client().exists(lock_key)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        stop_worker(worker)
    orphaned = Grant.objects.get(pk=grant.pk)
    assert orphaned.token_version == grant.token_version  # nothing was written
    assert orphaned.status == Grant.Status.ACTIVE
    assert orphaned.refresh_enqueued_at is not None  # still claimed by the dead task

    # The lock expires, the claim times out, the beat claims the grant again and another
    # worker refreshes it (the provider's reuse window covers the lost response). That
    # answer is the token issued at the lost call, long expired (the sandbox's last 2 s):
    # refreshed once more at once, with the unused refresh token that came with it.
    wait_until(lambda: not redis_client().exists(lock_key), 15, "the lock to expire")
    second = start_worker(tmp_path / "second.log", **worker_env)
    try:
        wait_until(lambda: tasks.enqueue_due_refreshes() == 1, 30, "the claim to time out")
        wait_until(lambda: version_of(grant) == grant.token_version + 2, 30, "the refreshes")
    finally:
        stop_worker(second)
    recovered = Grant.objects.get(pk=grant.pk)
    assert recovered.status == Grant.Status.ACTIVE
    assert recovered.failure_count == 0
    assert refresh_count(sandbox) == before + 3
    assert identity_works(sandbox, recovered.unseal("access_token"))
    fresh = ensure_fresh(grant.pk, min_ttl=1, force_refresh=True)
    assert identity_works(sandbox, fresh.unseal("access_token"))
