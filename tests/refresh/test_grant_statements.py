"""The refresh engine's read of a grant: what the ORM's select_related read gives, from a
query compiled once per process."""

from __future__ import annotations

import threading
import uuid

import pytest
from django.db import connections
from django.db.models.sql.compiler import SQLCompiler

from broker.models import Grant
from broker.refresh.grant_statements import grant_with_app_and_user
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
