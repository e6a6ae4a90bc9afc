"""The audit trail: every event is committed before the answer that caused it is sent, so
no failure elsewhere (a Redis failover that loses its last writes, a killed process) can
lose one; values from callers are made storable and bounded."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid

import pytest
import requests
from django.db import DatabaseError, connection

from broker.audit import trail
from broker.infra.redis_connection import redis_client
from broker.models import AuditEvent
from tests.api.conftest import audit_events
from tests.gunicorn_server import gunicorn

pytestmark = pytest.mark.django_db

URL = "/api/v1/access-token"


def test_an_event_is_stored_when_recorded():
    trail.record("service.authenticated", actor_type="service", actor="svc")
    assert AuditEvent.objects.get().actor == "svc"


def test_client_supplied_values_are_stored_sanitised():
    """A claimed client id with NUL or beyond the column's length is still stored (on
    PostgreSQL NUL would fail the insert)."""
    trail.record(
        "service.auth_failed",
        actor_type="service",
        actor="evil\x00" + "x" * 300,
        service="evil\x00" + "x" * 100,
        outcome="denied",
        reason="unknown client \x00",
    )
    stored = AuditEvent.objects.get(action="service.auth_failed")
    assert stored.service.startswith("evil\\x00") and len(stored.service) == 64
    assert "\x00" not in stored.detail["reason"]


def test_recorded_values_are_storable_and_bounded():
    trail.record(
        "service.auth_failed",
        actor_type="service",
        actor="\ud800" * 1000,
        outcome="denied",
        reason="x" * 1_000_000,
        nested={"\udfff" + "k" * 600: [["deep", ["deeper", ["deepest", ["too deep"]]]]]},
        many=list(range(1000)),
    )
    event = AuditEvent.objects.get()
    assert event.actor.startswith("\\ud800") and len(event.actor) == 255
    assert len(event.detail["reason"]) == trail.DETAIL_TEXT_LIMIT
    assert len(event.detail["many"]) == trail.DETAIL_ITEMS_LIMIT
    (key,) = event.detail["nested"]
    assert key.startswith("\\udfff") and len(key) == trail.DETAIL_TEXT_LIMIT
    assert event.detail["nested"][key] == [["deep", "…"]]  # four levels of containers
    assert len(json.dumps(event.detail)) < 10_000


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_a_json_inserted_event_is_the_row_the_orm_would_store():
    """broker.refresh.grant_statements writes its event with its change, as JSON the server
    reads into a row: every column must come out as the model's own insert stores it."""
    event = trail.event_fields(
        "grant.refreshed",
        actor_type="system",
        grant_id=uuid.uuid4(),
        subject_user="alice",
        provider="atlassian",
        scopes=["read:me", "write:jira-work"],
        nested={"a": [1, 2.5, None, "é"]},
    )
    with connection.cursor() as cursor:
        cursor.execute(trail.json_insert(), [f"[{trail.event_json(event)}]"])
    inserted = AuditEvent.objects.get()
    AuditEvent.objects.all().delete()
    trail.store(event)
    saved = AuditEvent.objects.get()
    columns = [f.attname for f in AuditEvent._meta.concrete_fields if not f.primary_key]
    assert [getattr(inserted, c) for c in columns] == [getattr(saved, c) for c in columns]


def test_no_token_is_served_when_its_event_cannot_be_stored(api, grant, rule, bearer, monkeypatch):
    """The event is part of the answer: without it, nothing is handed out."""
    headers = bearer()

    def refuse(*args, **kwargs):
        raise DatabaseError("the audit table is unwritable")

    monkeypatch.setattr(trail, "store", refuse)
    response = api.post(URL, {"grant": str(grant.pk)}, content_type="application/json", **headers)
    assert response.status_code >= 500
    assert grant.unseal("access_token").encode() not in response.content
    assert "access_token" not in response.json()


@pytest.mark.django_db(transaction=True)
def test_every_answer_has_its_event_even_when_redis_loses_its_writes(api, grant, rule, bearer):
    """A failover to a replica that lost the last writes: Redis emptied under the broker."""
    headers = bearer()
    for n in range(5):
        assert (
            api.post(
                URL, {"grant": str(grant.pk)}, content_type="application/json", **headers
            ).status_code
            == 200
        )
        if n == 2:
            redis_client().flushdb()
    assert len(audit_events(action="token.issued")) == 5


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_every_token_served_under_load_is_audited_even_when_a_worker_is_killed(
    grant, rule, bearer, tmp_path
):
    """Threads fetch through gunicorn (gunicorn.conf.py); one web worker is killed outright
    (SIGKILL) midway and Redis is emptied: every 200 received has its event."""
    headers = {"Authorization": bearer()["HTTP_AUTHORIZATION"]}
    body = {"grant": str(grant.pk)}
    served = [0]
    stop = threading.Event()
    with gunicorn(tmp_path / "gunicorn.log") as url:

        def load() -> None:
            session = requests.Session()
            while not stop.is_set():
                try:
                    response = session.post(f"{url}{URL}", json=body, headers=headers, timeout=10)
                except requests.ConnectionError:
                    session = requests.Session()  # the killed worker's connection
                    continue
                if response.status_code == 200:
                    served[0] += 1

        threads = [threading.Thread(target=load) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        workers = _gunicorn_workers(url)
        os.kill(workers[0], signal.SIGKILL)
        redis_client().flushdb()
        time.sleep(1.5)
        stop.set()
        for thread in threads:
            thread.join()
    assert served[0] > 20
    # At most one request per thread can have been recorded while its answer died with
    # the killed worker; no answer received lacks its event.
    assert served[0] <= len(audit_events(action="token.issued")) <= served[0] + len(threads)


def _gunicorn_workers(url: str) -> list[int]:
    """The pids of the web workers serving `url`: the processes whose command line binds its
    port and whose parent does too (the master)."""
    port = url.rsplit(":", 1)[1]
    bound: dict[int, int] = {}  # pid -> parent pid
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                if f"127.0.0.1:{port}".encode() not in cmdline.read():
                    continue
            with open(f"/proc/{entry}/stat") as stat:
                bound[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
    return sorted(pid for pid, parent in bound.items() if parent in bound)
