"""With a real Celery worker (subprocess, on this test run's Redis database): the upstream
revocation and the webhook of a revoked grant are delivered after the commit."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.models import AuditEvent, WebhookDelivery
from broker.revocation.revoke import revoke_grant
from tests.celery_worker import start_worker, stop_worker
from tests.factories import make_app, make_service, save_grant
from tests.processes import wait_until

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def worker(tmp_path):
    process = start_worker(tmp_path / "worker.log")
    yield process
    stop_worker(process)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_worker_revokes_upstream_and_delivers_the_webhook(owner, local_server, worker):
    app = make_app(revoke_url=f"{local_server.url}/oauth/revoke")
    make_service(
        "reports", webhook_url=f"{local_server.url}/hook", webhook_secret="bkw_w1", app=app
    )
    grant = save_grant(owner, app)

    assert revoke_grant(grant.pk, actor_type="admin", actor="root", reason="worker test")

    wait_until(
        lambda: {r.path for r in local_server.requests} == {"/oauth/revoke", "/hook"},
        40,
        "the upstream revocation and the webhook",
    )
    wait_until(
        lambda: WebhookDelivery.objects.filter(status="delivered").exists(), 40, "the delivery"
    )
    wait_until(
        lambda: AuditEvent.objects.filter(action="grant.upstream_revoked").exists(),
        40,
        "the audit event",
    )
    assert len(local_server.requests) == 2
