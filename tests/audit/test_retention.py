"""Audit retention (broker.audit.retention): events older than BROKER_AUDIT_RETENTION_DAYS
are deleted in bounded batches by the daily beat task and `manage.py pruneaudit`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from broker.audit import retention
from broker.celery import app
from broker.models import AuditEvent
from tests.sandbox_server import PROJECT_ROOT

pytestmark = pytest.mark.django_db


def events_aged(days: float, count: int, action: str = "token.issued") -> list[int]:
    at = timezone.now() - timedelta(days=days)
    events = [
        AuditEvent(at=at, actor_type="service", actor="svc", service="svc", action=action)
        for _ in range(count)
    ]
    return [e.pk for e in AuditEvent.objects.bulk_create(events)]


def remaining(ids: list[int]) -> int:
    return AuditEvent.objects.filter(pk__in=ids).count()


@pytest.fixture
def deletes() -> Any:
    """The row count of every DELETE the database runs meanwhile."""
    counts: list[int] = []

    def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        result = execute(sql, params, many, context)
        if sql.lstrip().upper().startswith("DELETE"):
            counts.append(context["cursor"].rowcount)
        return result

    with connection.execute_wrapper(count):
        yield counts


def test_events_older_than_the_retention_are_deleted_and_newer_ones_kept(settings):
    settings.BROKER_AUDIT_RETENTION_DAYS = 30
    old = events_aged(31, 5)
    kept = events_aged(29, 3) + events_aged(0, 2)
    report = retention.prune()
    assert remaining(old) == 0
    assert remaining(kept) == 5
    assert report["deleted"] == report["expired"] == 5
    assert report["retention_days"] == 30 and not report["dry_run"]


def test_each_delete_removes_at_most_one_batch(settings, deletes):
    settings.BROKER_AUDIT_RETENTION_DAYS = 1
    old = events_aged(2, 25)
    report = retention.prune(batch=10)
    assert remaining(old) == 0
    assert deletes == [10, 10, 5]  # three short statements, never one of all 25
    assert report["batches"] == 3 and report["deleted"] == 25


def test_the_oldest_events_go_first(settings):
    settings.BROKER_AUDIT_RETENTION_DAYS = 1
    younger = events_aged(2, 4)
    oldest = events_aged(900, 4)  # inserted last: the order is by time, not by id

    class Interrupted(Exception):
        pass

    deleted: list[str] = []

    def stop_after_one_delete(execute: Any, sql: str, params: Any, many: bool, ctx: Any) -> Any:
        if deleted:
            raise Interrupted  # the prune cut short after its first batch
        result = execute(sql, params, many, ctx)
        if sql.lstrip().upper().startswith("DELETE"):
            deleted.append(sql)
        return result

    with connection.execute_wrapper(stop_after_one_delete), pytest.raises(Interrupted):
        retention.prune(batch=4)
    assert remaining(oldest) == 0
    assert remaining(younger) == 4


def test_a_retention_of_zero_keeps_every_event(settings, deletes):
    settings.BROKER_AUDIT_RETENTION_DAYS = 0
    ancient = events_aged(10_000, 3)
    report = retention.prune()
    assert remaining(ancient) == 3
    assert deletes == []
    assert report == {
        "retention_days": 0,
        "cutoff": None,
        "dry_run": False,
        "expired": 0,
        "deleted": 0,
        "batches": 0,
    }
    assert not AuditEvent.objects.filter(action="audit.pruned").exists()


def test_a_dry_run_counts_and_deletes_nothing(settings, deletes):
    settings.BROKER_AUDIT_RETENTION_DAYS = 10
    old = events_aged(11, 4)
    report = retention.prune(dry_run=True)
    assert report["expired"] == 4 and report["deleted"] == 0
    assert remaining(old) == 4
    assert deletes == []
    assert not AuditEvent.objects.filter(action="audit.pruned").exists()


def test_the_prune_is_itself_audited(settings):
    settings.BROKER_AUDIT_RETENTION_DAYS = 10
    events_aged(11, 2)
    retention.prune()
    event = AuditEvent.objects.get(action="audit.pruned")
    assert event.actor_type == "system"
    assert event.detail["deleted"] == 2 and event.detail["retention_days"] == 10


def test_the_beat_runs_the_prune_task_daily(settings):
    entry = settings.CELERY_BEAT_SCHEDULE["prune-audit-events"]
    assert entry["task"] == "broker.audit.prune_old_events"
    assert entry["schedule"] == 86400.0
    app.loader.import_default_modules()  # what the worker does: CELERY_IMPORTS
    assert entry["task"] in app.tasks


def test_the_task_deletes_the_expired_events(settings):
    settings.BROKER_AUDIT_RETENTION_DAYS = 7
    old = events_aged(8, 3)
    kept = events_aged(6, 1)
    assert retention.prune_old_events_task.apply().get() == 3
    assert remaining(old) == 0 and remaining(kept) == 1


def test_the_command_prints_its_report_as_json(settings):
    settings.BROKER_AUDIT_RETENTION_DAYS = 5
    old = events_aged(6, 3)
    out = StringIO()
    call_command("pruneaudit", "--dry-run", "--json", stdout=out)
    report = json.loads(out.getvalue())
    assert report["dry_run"] is True and report["expired"] == 3 and report["deleted"] == 0
    assert remaining(old) == 3
    out = StringIO()
    call_command("pruneaudit", "--json", "--batch-size", "2", stdout=out)
    report = json.loads(out.getvalue())
    assert report["deleted"] == 3 and report["batches"] == 2
    assert report["retention_days"] == 5
    assert timezone.now() - timedelta(days=5, minutes=1) < timezone.datetime.fromisoformat(
        report["cutoff"]
    )
    assert remaining(old) == 0


def test_the_command_says_when_events_are_kept_forever(settings):
    settings.BROKER_AUDIT_RETENTION_DAYS = 0
    events_aged(1000, 1)
    out = StringIO()
    call_command("pruneaudit", stdout=out)
    assert "kept forever" in out.getvalue()
    assert AuditEvent.objects.count() == 1


def test_the_command_refuses_a_batch_of_zero(settings):
    from django.core.management.base import CommandError

    settings.BROKER_AUDIT_RETENTION_DAYS = 1
    old = events_aged(2, 1)
    with pytest.raises(CommandError, match="batch-size"):
        call_command("pruneaudit", "--batch-size", "0")
    assert remaining(old) == 1


@pytest.mark.parametrize("value", ["-1", "forever", "1.5"])
def test_a_retention_that_is_not_a_number_of_days_stops_start_up(value):
    result = subprocess.run(
        [sys.executable, "manage.py", "pruneaudit", "--dry-run"],
        cwd=PROJECT_ROOT,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "BROKER_AUDIT_RETENTION_DAYS": value,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and result.stdout == ""
    assert "BROKER_AUDIT_RETENTION_DAYS must be a whole number of days" in result.stderr
