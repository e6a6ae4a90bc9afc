"""With a real Celery worker (subprocess, on this test run's Redis database): the upstream
revocation and the webhook of a revoked grant are delivered after the commit."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from broker.models import AuditEvent, WebhookDelivery
from broker.revocation import revoke_grant
from tests.factories import make_app, make_service, save_grant

ROOT = Path(__file__).resolve().parent.parent


def database_url() -> str:
    params = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{params['NAME']}"
    user = params.get("USER") or "postgres"
    host = params.get("HOST") or "127.0.0.1"
    return f"postgres://{user}@{host}:{params.get('PORT') or 5432}/{params['NAME']}"


@pytest.fixture
def worker():
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "REDIS_URL": settings.REDIS_URL,
        "DATABASE_URL": database_url(),
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "broker",
            "worker",
            "--pool=solo",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            "WARNING",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    yield process
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_for(check, seconds: float = 40.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_worker_revokes_upstream_and_delivers_the_webhook(owner, local_server, worker):
    app = make_app(revoke_url=f"{local_server.url}/oauth/revoke")
    make_service(
        "reports", webhook_url=f"{local_server.url}/hook", webhook_secret="bkw_w1", app=app
    )
    grant = save_grant(owner, app)

    assert revoke_grant(grant.pk, actor_type="admin", actor="root", reason="worker test")

    assert wait_for(
        lambda: {r.path for r in local_server.requests} == {"/oauth/revoke", "/hook"}
    ), worker.stderr.read1().decode() if worker.poll() is not None else "timeout"
    assert wait_for(lambda: WebhookDelivery.objects.filter(status="delivered").exists())
    assert wait_for(lambda: AuditEvent.objects.filter(action="grant.upstream_revoked").exists())
    assert len(local_server.requests) == 2
