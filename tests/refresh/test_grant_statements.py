"""The refresh engine's statements on a grant, built once per process: its read gives what
the ORM's select_related read gives, its fenced write writes what the ORM's update writes."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta

import pytest
from django.db import IntegrityError, connection, connections
from django.db.models.sql.compiler import SQLCompiler
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from broker.audit import trail
from broker.models import AuditEvent, Grant
from broker.refresh.grant_statements import (
    grant_with_app_and_user,
    update_and_record_if_current,
    update_if_current,
)
from tests.factories import make_app, save_grant

pytestmark = pytest.mark.django_db


def fields(instance) -> dict:
    return {f.attname: getattr(instance, f.attname) for f in type(instance)._meta.concrete_fields}


def test_it_reads_what_the_orm_reads(owner):
    grant = save_grant(owner, make_app(), access="a-1", refresh="r-1", scopes=["read", "write"])
    read = grant_with_app_and_user(grant.pk)
    orm = Grant.objects.select_related("user", "provider_app").get(pk=grant.pk)
    assert fields(read) == fields(orm)
    assert fields(read.provider_app) == fields(orm.provider_app)
    assert fields(read.user) == fields(orm.user)
    assert read.unseal("access_token") == "a-1"
    assert read.provider_app.unseal("client_secret") == "app-secret-1"
    assert not read._state.adding


def test_it_takes_the_id_as_text_too(owner):
    grant = save_grant(owner, make_app())
    assert grant_with_app_and_user(str(grant.pk)).pk == grant.pk


@pytest.mark.parametrize("grant_id", [uuid.uuid4(), "not-a-uuid"])
def test_a_missing_grant_raises_does_not_exist(grant_id):
    with pytest.raises(Grant.DoesNotExist):
        grant_with_app_and_user(grant_id)


def test_the_query_is_compiled_once(owner, monkeypatch):
    grant = save_grant(owner, make_app())
    grant_with_app_and_user(grant.pk)
    compiled = []
    original = SQLCompiler.as_sql
    monkeypatch.setattr(
        SQLCompiler, "as_sql", lambda self, *a, **kw: compiled.append(1) or original(self, *a, **kw)
    )
    for _ in range(3):
        grant_with_app_and_user(grant.pk)
    assert compiled == []


@pytest.mark.django_db(transaction=True)
def test_a_new_thread_reads_on_its_own_connection_without_compiling_again(owner, monkeypatch):
    """A burst of callers lands on threads new to the read: none compiles it again, and
    each reads through its own connection."""
    grant = save_grant(owner, make_app(), access="a-1")
    grant_with_app_and_user(grant.pk)
    compiled = []
    original = SQLCompiler.as_sql
    monkeypatch.setattr(
        SQLCompiler, "as_sql", lambda self, *a, **kw: compiled.append(1) or original(self, *a, **kw)
    )
    read: dict[str, object] = {}

    def in_a_new_thread() -> None:
        try:
            found = grant_with_app_and_user(grant.pk)
            read["token"] = found.unseal("access_token")
            read["connection"] = connections["default"]
        finally:
            connections.close_all()

    thread = threading.Thread(target=in_a_new_thread)
    thread.start()
    thread.join()
    assert read["token"] == "a-1"
    assert read["connection"] is not connections["default"]
    assert compiled == []


def refreshed_values(grant: Grant, now: datetime) -> dict:
    """What a refresh writes (broker.refresh.schedule.apply_token_response's fields)."""
    later = now + timedelta(hours=1)
    grant.seal("access_token", "a-2")
    grant.seal("refresh_token", "r-2")
    return {
        "access_token_sealed": grant.access_token_sealed,
        "refresh_token_sealed": grant.refresh_token_sealed,
        "access_expires_at": later,
        "token_version": grant.token_version + 1,
        "scopes": ["read", "write", "admin"],
        "next_refresh_at": later - timedelta(minutes=5),
        "refresh_enqueued_at": None,
        "last_refreshed_at": now,
        "failure_count": 0,
        "last_error": "",
        "updated_at": now,
    }


def test_the_fenced_update_writes_what_the_orms_update_writes(owner):
    app = make_app()
    mine = save_grant(owner, app, 1, access="a-1", refresh="r-1", failure_count=2, last_error="x")
    orms = save_grant(owner, app, 2, access="a-1", refresh="r-1", failure_count=2, last_error="x")
    now = timezone.now()
    assert update_if_current(mine.pk, mine.token_version, refreshed_values(mine, now)) == 1
    assert (
        Grant.objects.filter(
            pk=orms.pk, token_version=orms.token_version, status=Grant.Status.ACTIVE
        ).update(**refreshed_values(orms, now))
        == 1
    )
    written, expected = fields(Grant.objects.get(pk=mine.pk)), fields(Grant.objects.get(pk=orms.pk))
    # What told the two apart before (ids, account names, ciphertexts bound to their rows)
    # still does; everything else is the same.
    own = {name for name, value in fields(mine).items() if fields(orms)[name] != value}
    assert own <= {
        "id",
        "external_account_id",
        "account_name",
        "created_at",
        "consented_at",
        "access_token_sealed",
        "refresh_token_sealed",
        "updated_at",
    }
    assert {k: v for k, v in written.items() if k not in own} == {
        k: v for k, v in expected.items() if k not in own
    }
    assert written["updated_at"] == expected["updated_at"] == now
    assert Grant.objects.get(pk=mine.pk).unseal("refresh_token") == "r-2"
    assert written["scopes"] == ["read", "write", "admin"] and written["failure_count"] == 0


@pytest.mark.parametrize(
    "moved_on", [{"token_version": 8}, {"status": Grant.Status.REVOKED}], ids=["newer", "revoked"]
)
def test_the_fenced_update_writes_nothing_once_the_grant_moved_on(owner, moved_on):
    grant = save_grant(owner, make_app(), access="a-1", refresh="r-1", token_version=7)
    Grant.objects.filter(pk=grant.pk).update(**moved_on)
    assert update_if_current(grant.pk, 7, refreshed_values(grant, timezone.now())) == 0
    assert Grant.objects.get(pk=grant.pk).unseal("refresh_token") == "r-1"


def refreshed_event(grant: Grant, **changes) -> dict:
    event = trail.event_fields(
        "grant.refreshed",
        actor_type=trail.ActorType.SYSTEM,
        actor="refresh-engine",
        grant_id=grant.pk,
        subject_user="alice",
        provider="acme",
        scopes=["read", "write"],
        token_version=grant.token_version + 1,
    )
    return {**event, **changes}


def test_a_written_refresh_stores_its_event_as_the_orm_would(owner):
    grant = save_grant(owner, make_app(), access="a-1", refresh="r-1")
    event = refreshed_event(grant)
    assert update_and_record_if_current(
        grant.pk, grant.token_version, refreshed_values(grant, timezone.now()), event
    )
    assert Grant.objects.get(pk=grant.pk).unseal("refresh_token") == "r-2"
    stored = AuditEvent.objects.get()
    trail.store({**event, "event_id": str(uuid.uuid4())})  # the model's own insert
    by_orm = AuditEvent.objects.exclude(pk=stored.pk).get()
    differ = {"id", "event_id"}
    assert {k: v for k, v in fields(stored).items() if k not in differ} == {
        k: v for k, v in fields(by_orm).items() if k not in differ
    }
    assert stored.at == event["at"] and stored.detail == {"token_version": grant.token_version + 1}


@pytest.mark.parametrize(
    "moved_on", [{"token_version": 8}, {"status": Grant.Status.REVOKED}], ids=["newer", "revoked"]
)
def test_a_refresh_fenced_out_stores_no_event(owner, moved_on):
    grant = save_grant(owner, make_app(), access="a-1", refresh="r-1", token_version=7)
    Grant.objects.filter(pk=grant.pk).update(**moved_on)
    values = refreshed_values(grant, timezone.now())
    assert not update_and_record_if_current(grant.pk, 7, values, refreshed_event(grant))
    assert Grant.objects.get(pk=grant.pk).unseal("refresh_token") == "r-1"
    assert not AuditEvent.objects.exists()


@pytest.mark.django_db(transaction=True)  # as in a worker: no test transaction around it
def test_an_event_that_cannot_be_stored_undoes_the_write(owner):
    grant = save_grant(owner, make_app(), access="a-1", refresh="r-1")
    values = refreshed_values(grant, timezone.now())
    with pytest.raises(IntegrityError):
        update_and_record_if_current(
            grant.pk, grant.token_version, values, refreshed_event(grant, action=None)
        )
    assert Grant.objects.get(pk=grant.pk).unseal("refresh_token") == "r-1"
    assert not AuditEvent.objects.exists()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="one statement on PostgreSQL")
@pytest.mark.django_db(transaction=True)
def test_on_postgresql_the_write_and_its_event_are_one_statement(owner):
    grant = save_grant(owner, make_app(), access="a-1", refresh="r-1")
    values = refreshed_values(grant, timezone.now())
    with CaptureQueriesContext(connection) as queries:
        update_and_record_if_current(grant.pk, grant.token_version, values, refreshed_event(grant))
    assert len(queries) == 1 and queries[0]["sql"].startswith("WITH written AS (UPDATE")
    assert AuditEvent.objects.count() == 1
