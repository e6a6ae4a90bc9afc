"""Buffered audit events (broker.audit.trail.record_soon / flush_buffer): none lost."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from broker.audit import trail
from broker.infra.redis_connection import redis_client
from broker.models import AuditEvent
from tests.api.conftest import metric_value

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def own_local_copy(monkeypatch):
    """Each test its own in-memory copy, written only when the test says so, emptied after
    it (its atexit write would find no test database)."""
    copy = trail.LocalCopy(writer_thread=False)
    monkeypatch.setattr(trail, "_local", copy)
    yield
    copy.discard()


def test_buffered_events_reach_the_database_on_flush():
    for n in range(3):
        trail.record_soon(
            "token.issued", actor_type="service", actor="svc", service="svc", scopes=["a"], n=n
        )
    assert not AuditEvent.objects.exists()
    assert redis_client().llen(trail.BUFFER_KEY) == 3
    assert trail.flush_buffer(batch=2) == 3
    events = list(AuditEvent.objects.order_by("at"))
    assert [e.detail["n"] for e in events] == [0, 1, 2]
    assert events[0].scopes == ["a"] and events[0].at is not None
    assert redis_client().llen(trail.BUFFER_KEY) == 0


def test_a_flushed_event_is_the_row_the_orm_would_store():
    """On PostgreSQL the flusher hands the server the batch as JSON to read into rows;
    every column must come out as the model's own insert stores it."""
    raw = trail.service_event_json(
        "token.issued",
        "svc",
        grant_id=uuid.uuid4(),
        subject_user="alice",
        provider="atlassian",
        scopes=["read:me", "write:jira-work"],
        min_ttl=60,
        narrowed=False,
        nested={"a": [1, 2.5, None, "é"]},
    )
    redis_client().rpush(trail.BUFFER_KEY, raw)
    assert trail.flush_buffer() == 1
    flushed = AuditEvent.objects.get()
    AuditEvent.objects.all().delete()
    trail._from_buffer(raw).save()
    saved = AuditEvent.objects.get()
    columns = [f.attname for f in AuditEvent._meta.concrete_fields if not f.primary_key]
    assert [getattr(flushed, c) for c in columns] == [getattr(saved, c) for c in columns]
    assert flushed.event_id == uuid.UUID(json.loads(raw)["event_id"])


def test_the_celery_task_flushes(settings):
    trail.record_soon("service.authenticated", actor_type="service", actor="svc")
    assert trail.flush_buffer_task.apply().get() == 1
    assert "flush-audit-buffer" in settings.CELERY_BEAT_SCHEDULE


def test_events_go_straight_to_the_database_when_redis_is_down(settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    trail.record_soon("token.denied", actor_type="service", actor="svc", outcome="denied")
    assert AuditEvent.objects.filter(action="token.denied", outcome="denied").count() == 1


def detours(kind: str) -> float:
    return metric_value("broker_audit_detours_total", kind=kind)


def test_a_full_buffer_writes_events_directly_and_counts_them(settings):
    settings.BROKER_AUDIT_BUFFER_MAX = 2
    before = detours("written_directly")
    for n in range(3):
        trail.record_soon("token.issued", actor_type="service", actor="svc", n=n)
    assert redis_client().llen(trail.BUFFER_KEY) == 2
    assert [e.detail["n"] for e in AuditEvent.objects.all()] == [2]
    assert detours("written_directly") == before + 1
    assert trail.flush_buffer() == 2
    assert sorted(e.detail["n"] for e in AuditEvent.objects.all()) == [0, 1, 2]


def test_a_failed_insert_leaves_the_events_in_the_buffer(monkeypatch):
    trail.record_soon("token.issued", actor_type="service", actor="svc")

    def fail(*args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(trail, "_store", fail)
    with pytest.raises(RuntimeError):
        trail.flush_buffer()
    assert redis_client().llen(trail.BUFFER_KEY) == 1
    monkeypatch.undo()
    assert trail.flush_buffer() == 1


def test_client_supplied_values_cannot_poison_the_buffer():
    """A claimed client id with NUL or beyond the column's length is still stored (on
    PostgreSQL NUL would fail the whole batch)."""
    trail.record_soon(
        "service.auth_failed",
        actor_type="service",
        actor="evil\x00" + "x" * 300,
        service="evil\x00" + "x" * 100,
        outcome="denied",
        reason="unknown client \x00",
    )
    trail.record_soon("service.authenticated", actor_type="service", actor="fine")
    assert trail.flush_buffer() == 2
    stored = AuditEvent.objects.get(action="service.auth_failed")
    assert stored.service.startswith("evil\\x00") and len(stored.service) == 64
    assert "\x00" not in stored.detail["reason"]
    assert AuditEvent.objects.filter(action="service.authenticated").exists()


def test_a_poison_event_is_set_aside_and_counted_and_the_others_flow():
    """Events an older broker buffered unsanitised (a lone surrogate fails every database's
    UTF-8 encoding; a malformed entry fails to load) must not block the events behind them."""
    surrogate = json.dumps(
        {
            "at": "2026-01-01T00:00:00+00:00",
            "action": "x",
            "actor": "\ud800",
            "actor_type": "service",
        }
    )
    malformed = b"{not json"
    redis_client().rpush(trail.BUFFER_KEY, surrogate, malformed)
    trail.record_soon("service.authenticated", actor_type="service", actor="fine")
    before = detours("set_aside")
    assert trail.flush_buffer() == 1
    assert list(AuditEvent.objects.values_list("actor", flat=True)) == ["fine"]
    assert redis_client().llen(trail.BUFFER_KEY) == 0
    assert redis_client().lrange(trail.DEAD_LETTER_KEY, -2, -1) == [surrogate.encode(), malformed]
    assert detours("set_aside") == before + 2
    trail.record_soon("service.authenticated", actor_type="service", actor="later")
    assert trail.flush_buffer() == 1


def test_recorded_values_are_storable_and_bounded():
    trail.record_soon(
        "service.auth_failed",
        actor_type="service",
        actor="\ud800" * 1000,
        outcome="denied",
        reason="x" * 1_000_000,
        nested={"\udfff" + "k" * 600: [["deep", ["deeper", ["deepest", ["too deep"]]]]]},
        many=list(range(1000)),
    )
    assert trail.flush_buffer() == 1
    event = AuditEvent.objects.get()
    assert event.actor.startswith("\\ud800") and len(event.actor) == 255
    assert len(event.detail["reason"]) == trail.DETAIL_TEXT_LIMIT
    assert len(event.detail["many"]) == trail.DETAIL_ITEMS_LIMIT
    (key,) = event.detail["nested"]
    assert key.startswith("\\udfff") and len(key) == trail.DETAIL_TEXT_LIMIT
    assert event.detail["nested"][key] == [["deep", "…"]]  # four levels of containers
    assert len(json.dumps(event.detail)) < 10_000


def test_the_flush_lock_is_released_only_by_its_owner(monkeypatch):
    """A flush that outlived its lock (a slow batch) must not delete the lock another
    flusher took meanwhile, and must stop rather than read the same head again."""
    for n in range(3):
        trail.record_soon("token.issued", actor_type="service", actor="svc", n=n)
    insert = trail._insert

    def slow_insert(raw_events):
        # Meanwhile the lock expired and another flusher took it.
        redis_client().set(trail.FLUSH_LOCK_KEY, "another-flusher", ex=60)
        return insert(raw_events)

    monkeypatch.setattr(trail, "_insert", slow_insert)
    assert trail.flush_buffer(batch=1) == 1
    assert redis_client().get(trail.FLUSH_LOCK_KEY) == b"another-flusher"
    assert redis_client().llen(trail.BUFFER_KEY) == 2
    monkeypatch.undo()
    assert trail.flush_buffer() == 0  # the other flusher holds the lock
    redis_client().delete(trail.FLUSH_LOCK_KEY)
    assert trail.flush_buffer() == 2


def service_events(n: int) -> None:
    for i in range(n):
        trail.record_soon("token.issued", actor_type="service", actor="svc", n=i)


def test_events_survive_redis_losing_the_buffer(settings):
    """A Redis flush (or restart without persistence) loses the buffer: the recording
    process's own copy still stores every event."""
    settings.BROKER_AUDIT_COPY_SECONDS = 3600  # written explicitly below
    service_events(3)
    redis_client().flushdb()
    assert not AuditEvent.objects.exists()
    assert trail.write_local_copy() == 3
    assert sorted(e.detail["n"] for e in AuditEvent.objects.all()) == [0, 1, 2]
    assert trail.write_local_copy() == 0  # written once


def test_events_survive_the_process_losing_its_copy(settings):
    """A web process killed before its thread wrote its copy: the buffer still has them."""
    settings.BROKER_AUDIT_COPY_SECONDS = 3600
    service_events(2)
    trail._local.discard()  # the process was killed
    assert trail.flush_buffer() == 2
    assert AuditEvent.objects.count() == 2


def test_both_copies_store_each_event_once(settings):
    settings.BROKER_AUDIT_COPY_SECONDS = 3600
    service_events(3)
    trail.write_local_copy()
    assert trail.flush_buffer() == 3
    trail.record_soon("token.issued", actor_type="service", actor="svc", n=3)
    assert trail.flush_buffer() == 1
    trail.write_local_copy()
    assert sorted(e.detail["n"] for e in AuditEvent.objects.all()) == [0, 1, 2, 3]
    assert len({e.event_id for e in AuditEvent.objects.all()}) == 4


def test_the_copy_inserts_nothing_the_flusher_stored(settings, monkeypatch):
    """The usual case: the buffer's flusher stored every event before the copy's turn;
    the copy looks them up and inserts none a second time."""
    settings.BROKER_AUDIT_COPY_SECONDS = 3600
    service_events(3)
    assert trail.flush_buffer() == 3
    inserted: list[str] = []
    monkeypatch.setattr(trail, "_insert", lambda raws: inserted.extend(raws) or [])
    assert trail.write_local_copy() == 3
    assert inserted == []


def test_the_copy_reads_the_id_of_an_event_written_otherwise(settings):
    """The copy reads an event's id from where event_fields puts it without parsing the
    event; an event written another way (its keys in another order) is parsed, and
    stored once all the same."""
    settings.BROKER_AUDIT_COPY_SECONDS = 3600
    fields = json.loads(trail.service_event_json("token.issued", "svc", n=0))
    reordered = json.dumps(dict(reversed(fields.items())))
    for _ in range(2):
        trail._local.keep(reordered)
        assert trail.write_local_copy() == 1
        assert [e.event_id for e in AuditEvent.objects.all()] == [uuid.UUID(fields["event_id"])]


def test_the_copy_waits_for_the_flusher_before_its_turn(settings, monkeypatch):
    """The thread's writes take only events held BROKER_AUDIT_COPY_SECONDS; then those
    the buffer lost are stored."""
    settings.BROKER_AUDIT_COPY_SECONDS = 10
    service_events(2)
    redis_client().flushdb()
    assert trail._local.write(settled_only=True) == 0
    later = time.monotonic() + 11
    monkeypatch.setattr(time, "monotonic", lambda: later)
    assert trail._local.write(settled_only=True) == 2
    assert sorted(e.detail["n"] for e in AuditEvent.objects.all()) == [0, 1]


def test_the_copy_holds_the_newest_events_within_its_bound(settings, monkeypatch):
    """A database away for long: the copy drops its oldest blocks beyond LOCAL_COPY_MAX
    events (the buffer still has them)."""
    settings.BROKER_AUDIT_COPY_SECONDS = 3600
    monkeypatch.setattr(trail, "LOCAL_COPY_MAX", 4)
    for _ in range(3):
        service_events(2)
        trail._local.write(settled_only=True)  # packs the second's events, writes none
    service_events(1)
    redis_client().flushdb()
    assert trail.write_local_copy() == 3  # the last block of two, and the newest event
    assert AuditEvent.objects.count() == 3


def test_a_failed_write_of_the_copy_keeps_it_for_the_next(settings, monkeypatch):
    settings.BROKER_AUDIT_COPY_SECONDS = 3600
    service_events(2)
    redis_client().delete(trail.BUFFER_KEY)

    def fail(*args, **kwargs):
        raise RuntimeError("database went away")

    with monkeypatch.context() as patched:
        patched.setattr(trail, "_store", fail)
        with pytest.raises(RuntimeError):
            trail.write_local_copy()
    assert trail.write_local_copy() == 2
    assert AuditEvent.objects.count() == 2


def test_no_copy_is_kept_when_turned_off():
    service_events(1)  # tests.settings: BROKER_AUDIT_COPY_SECONDS = 0
    assert trail.write_local_copy() == 0
    assert trail.flush_buffer() == 1


def test_a_push_queued_on_the_callers_pipeline(settings):
    """The hot path's own pipeline carries the push: no round trip of its own."""
    settings.BROKER_AUDIT_COPY_SECONDS = 3600
    raw = json.dumps(
        {
            "event_id": "6a1f0c3e-0000-4000-8000-000000000001",
            "at": "2026-01-01T00:00:00+00:00",
            "action": "token.issued",
            "actor_type": "service",
            "actor": "svc",
        }
    )
    pipe = redis_client().pipeline(transaction=False)
    pipe.incr("broker:test:other-command")
    trail.queue_push(pipe, raw)
    _, pushed = pipe.execute()
    trail.pushed_or_written(raw, pushed)
    assert redis_client().llen(trail.BUFFER_KEY) == 1
    assert trail.write_local_copy() == 1
    assert trail.flush_buffer() == 1
    assert AuditEvent.objects.get().event_id == uuid.UUID("6a1f0c3e-0000-4000-8000-000000000001")
