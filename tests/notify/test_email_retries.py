"""A user's e-mail survives a mail server that is away: it is retried with backoff (the
webhooks' task base, broker.infra.retried_task) and arrives once; a mail server that
refuses the message for good ends in the audit log, never in silence."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.models import AuditEvent
from broker.notify.dispatch import email_user
from broker.revocation.revoke import revoke_grant
from tests.celery_worker import start_worker, stop_worker
from tests.factories import make_app, save_grant
from tests.processes import wait_until
from tests.sandbox_server import free_port
from tests.smtp_server import start_smtp_server


@pytest.fixture
def smtp_settings(settings):
    def point_at(port: int) -> None:
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST = "127.0.0.1"
        settings.EMAIL_PORT = port
        settings.EMAIL_TIMEOUT = 5

    return point_at


@pytest.mark.django_db(transaction=True)
def test_an_email_is_retried_when_the_mail_server_hangs_up_and_arrives_once(
    owner, eager_celery, smtp_settings
):
    smtp = start_smtp_server(hang_up_first=2)
    try:
        smtp_settings(smtp.port)
        grant = save_grant(owner, make_app())

        revoke_grant(grant.pk, actor_type="admin", actor="root", reason="email test")

        assert smtp.connections == 3
        assert len(smtp.messages) == 1
        assert smtp.messages[0].recipients == ["<alice@example.com>"]
        assert not AuditEvent.objects.filter(action="user.email_failed").exists()
    finally:
        smtp.stop()


@pytest.mark.django_db(transaction=True)
def test_an_email_that_never_gets_through_is_recorded_as_failed(
    owner, eager_celery, smtp_settings, monkeypatch
):
    port = free_port()  # nothing listens there: every attempt is refused
    smtp_settings(port)
    monkeypatch.setattr(email_user, "max_retries", 2)
    grant = save_grant(owner, make_app())

    revoke_grant(grant.pk, actor_type="admin", actor="root", reason="email test")

    failed = AuditEvent.objects.get(action="user.email_failed")
    assert failed.grant_id == grant.pk
    assert failed.outcome == AuditEvent.Outcome.FAILURE
    assert failed.detail["event"] == "grant.revoked"
    assert failed.detail["attempts"] == 3
    assert "ConnectionRefusedError" in failed.detail["error"]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_worker_sends_the_email_once_the_mail_server_is_back(owner, tmp_path: Path):
    port = free_port()  # the mail server is down (refuses connections) at first
    log_file = tmp_path / "worker.log"
    worker = start_worker(log_file, EMAIL_URL=f"smtp://127.0.0.1:{port}", EMAIL_TIMEOUT="5")
    smtp = None
    try:
        grant = save_grant(owner, make_app())
        revoke_grant(grant.pk, actor_type="admin", actor="root", reason="email test")

        wait_until(
            lambda: (
                b"broker.notifications.email_user" in log_file.read_bytes()
                and b"RETRY" in log_file.read_bytes()
            ),
            40,
            "the first attempt to fail and be retried",
            process=worker,
            log_file=log_file,
        )
        smtp = start_smtp_server(port=port)
        wait_until(lambda: smtp.messages, 60, "the e-mail", process=worker, log_file=log_file)
        stop_worker(worker)

        assert len(smtp.messages) == 1
        assert smtp.messages[0].recipients == ["<alice@example.com>"]
        assert b"connection was revoked" in smtp.messages[0].data
    finally:
        stop_worker(worker)
        if smtp is not None:
            smtp.stop()
