"""Buffered audit events (broker.audit.record_soon / flush_buffer): none lost."""

from __future__ import annotations

import pytest
import redis

from broker import audit
from broker.models import AuditEvent
from broker.redis_connection import redis_client

pytestmark = pytest.mark.django_db


def test_buffered_events_reach_the_database_on_flush():
    for n in range(3):
        audit.record_soon(
            "token.issued", actor_type="service", actor="svc", service="svc", scopes=["a"], n=n
        )
    assert not AuditEvent.objects.exists()
    assert redis_client().llen(audit.BUFFER_KEY) == 3
    assert audit.flush_buffer(batch=2) == 3
    events = list(AuditEvent.objects.order_by("at"))
    assert [e.detail["n"] for e in events] == [0, 1, 2]
    assert events[0].scopes == ["a"] and events[0].at is not None
    assert redis_client().llen(audit.BUFFER_KEY) == 0


def test_the_celery_task_flushes(settings):
    audit.record_soon("service.authenticated", actor_type="service", actor="svc")
    assert audit.flush_buffer_task.apply().get() == 1
    assert "flush-audit-buffer" in settings.CELERY_BEAT_SCHEDULE


def test_events_go_straight_to_the_database_when_redis_is_down(monkeypatch):
    class Down:
        def rpush(self, *args, **kwargs):
            raise redis.ConnectionError("connection refused")

    monkeypatch.setattr(audit, "redis_client", lambda: Down())
    audit.record_soon("token.denied", actor_type="service", actor="svc", outcome="denied")
    assert AuditEvent.objects.filter(action="token.denied", outcome="denied").count() == 1


def test_a_failed_insert_leaves_the_events_in_the_buffer(monkeypatch):
    audit.record_soon("token.issued", actor_type="service", actor="svc")

    def fail(*args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(AuditEvent.objects, "bulk_create", fail)
    with pytest.raises(RuntimeError):
        audit.flush_buffer()
    assert redis_client().llen(audit.BUFFER_KEY) == 1
    monkeypatch.undo()
    assert audit.flush_buffer() == 1


def test_client_supplied_values_cannot_poison_the_buffer():
    """A claimed client id with NUL or beyond the column's length is still stored (on
    PostgreSQL NUL would fail the whole batch)."""
    audit.record_soon(
        "service.auth_failed",
        actor_type="service",
        actor="evil\x00" + "x" * 300,
        service="evil\x00" + "x" * 100,
        outcome="denied",
        reason="unknown client \x00",
    )
    audit.record_soon("service.authenticated", actor_type="service", actor="fine")
    assert audit.flush_buffer() == 2
    stored = AuditEvent.objects.get(action="service.auth_failed")
    assert stored.service.startswith("evil\\x00") and len(stored.service) == 64
    assert "\x00" not in stored.detail["reason"]
    assert AuditEvent.objects.filter(action="service.authenticated").exists()
