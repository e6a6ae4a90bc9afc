"""The refresh engine's statements on its grant, built once per process: its read, and
the fenced write of a refresh's result.

Every refresh reads its grant (with its provider app and user) under the lock. Building
that three-table statement through the ORM costs more than running it, so the ORM compiles
it once per process and database alias, noting which columns belong to which model; each
thread takes a copy bound to its own connection with the list of converters its columns
need there (the backend's own: UUIDs, datetimes, JSON; finding them again for each row was
a large part of the read). Each call only binds the id, runs the statement, lets the
compiler apply those converters to the row and makes the model instances with
`Model.from_db`, as the ORM's own iterator does.

The write (`update_if_current`) is the ORM's `filter(...).update(...)` of the same fields
with the same fence, whose building cost more than its running: its text is built once per
set of fields written, and each call prepares the values as the ORM's update does
(`Field.get_db_prep_save`).

A refresh's result and its audit event are one transaction (`update_and_record_if_current`).
On PostgreSQL that is one statement, the update in a WITH and the event inserted only if
the update wrote the row, run without BEGIN and COMMIT, instead of four round trips (BEGIN,
UPDATE, INSERT, COMMIT) and the event's model instance. Elsewhere it is the update and
`trail.store` in a transaction. The figures that chose this: benchmarks/README.md,
"Figures behind the code".
"""

from __future__ import annotations

import copy
import threading
import uuid
from dataclasses import dataclass
from typing import Any, TypeVar

from django.db import connections, router, transaction
from django.db.models import Field, Model
from django.db.models.sql.compiler import SQLCompiler

from accounts.models import User
from broker.audit import trail
from broker.models import Grant, ProviderApp

M = TypeVar("M", bound=Model)


@dataclass(frozen=True)
class _Compiled:
    """The read as compiled once per process and database alias."""

    compiler: SQLCompiler
    sql: str
    # Per model: the attribute names of its columns and where they sit in the row.
    layout: dict[type[Model], tuple[list[str], slice]]


@dataclass(frozen=True)
class _Read:
    """A thread's copy of the read, bound to its own connection."""

    compiler: SQLCompiler
    sql: str
    layout: dict[type[Model], tuple[list[str], slice]]
    # What SQLCompiler.get_converters finds for the columns, on the compiler's connection.
    converters: dict[int, Any]


# Compiled once per process and database alias; each thread takes a copy bound to its own
# connection (Django's are per thread), whose converters it applies to the rows. Compiling
# in every thread cost a burst of callers (each one on a thread new to it) a fifth of
# their CPU.
_compiled_once: dict[str, _Compiled] = {}
_compiled_here = threading.local()


def _read_statement(alias: str) -> _Read:
    mine: dict[str, _Read] = _compiled_here.__dict__.setdefault("reads", {})
    if alias not in mine:
        if alias not in _compiled_once:
            _compiled_once[alias] = _compile_read(alias)
        compiled = _compiled_once[alias]
        bound = copy.copy(compiled.compiler)
        bound.connection = connections[alias]
        converters = bound.get_converters([column for column, _sql, _alias in bound.select])
        mine[alias] = _Read(bound, compiled.sql, compiled.layout, converters)
    return mine[alias]


def _compile_read(alias: str) -> _Compiled:
    query = (
        Grant.objects.using(alias)
        .select_related("provider_app", "user")
        .filter(pk=uuid.UUID(int=0))
        .order_by()
    ).query
    compiler = query.get_compiler(using=alias)
    sql, params = compiler.as_sql()
    assert len(params) == 1, "the grant id must be the query's only parameter"
    columns = [column for column, _sql, _alias in compiler.select]
    # The selected columns are each model's concrete fields, in their order, model by model.
    layout: dict[type[Model], tuple[list[str], slice]] = {}
    for model in (Grant, ProviderApp, User):
        at = [n for n, column in enumerate(columns) if column.target.model is model]
        assert at == list(range(at[0], at[-1] + 1)), "a model's columns are not together"
        layout[model] = ([columns[n].target.attname for n in at], slice(at[0], at[-1] + 1))
    assert sum(len(names) for names, _ in layout.values()) == len(columns)
    return _Compiled(compiler, sql, layout)


def grant_with_app_and_user(grant_id: Any) -> Grant:
    """What `Grant.objects.select_related("user", "provider_app").get(pk=grant_id)`
    returns; raises Grant.DoesNotExist (also for an id that is not a UUID)."""
    try:
        pk_value = grant_id if isinstance(grant_id, uuid.UUID) else uuid.UUID(str(grant_id))
    except ValueError:
        raise Grant.DoesNotExist(f"no grant {grant_id!r}") from None
    alias = router.db_for_read(Grant)
    read = _read_statement(alias)
    connection = connections[alias]
    pk = Grant._meta.pk
    assert pk is not None
    with connection.cursor() as cursor:
        cursor.execute(read.sql, [pk.get_db_prep_value(pk_value, connection)])
        raw = cursor.fetchone()
    if raw is None:
        raise Grant.DoesNotExist(f"no grant {grant_id}")
    row = next(read.compiler.apply_converters([raw], read.converters))

    def made(model: type[M]) -> M:
        names, where = read.layout[model]
        return model.from_db(alias, names, row[where])

    grant = made(Grant)
    grant.provider_app = made(ProviderApp)
    grant.user = made(User)
    return grant


# The fenced update's text and the fields its values go to, per database alias and set of
# fields written (no connection in them: shared by all threads).
_updates: dict[tuple[str, tuple[str, ...]], tuple[str, list[Field[Any, Any]]]] = {}
# PostgreSQL: that update with an audit event's insert, one statement.
_updates_with_event: dict[tuple[str, tuple[str, ...]], str] = {}


def update_if_current(grant_id: uuid.UUID, seen_version: int, values: dict[str, Any]) -> int:
    """What `Grant.objects.filter(pk=grant_id, token_version=seen_version,
    status=Grant.Status.ACTIVE).update(**values)` does, for plain values of the grant's own
    columns (no expressions, no relations): the number of rows written, 0 or 1."""
    alias = router.db_for_write(Grant)
    sql, params = _update_with_params(alias, grant_id, seen_version, values)
    with connections[alias].cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def update_and_record_if_current(
    grant_id: uuid.UUID, seen_version: int, values: dict[str, Any], event: dict[str, Any]
) -> bool:
    """`update_if_current`, and, only if it wrote the row, the audit event `event` (made by
    `trail.event_fields`), all or nothing. Returns whether the row was written."""
    alias = router.db_for_write(Grant)
    connection = connections[alias]
    if connection.vendor != "postgresql":
        with transaction.atomic(using=alias, durable=True):
            written = update_if_current(grant_id, seen_version, values) == 1
            if written:
                trail.store(event)
        return written
    update, params = _update_with_params(alias, grant_id, seen_version, values)
    key = (alias, tuple(values))
    if key not in _updates_with_event:
        # One statement is one transaction: the event is inserted only when the update
        # returned the row it wrote, and a failure of either writes neither.
        _updates_with_event[key] = (
            f"WITH written AS ({update} RETURNING 1) "
            f"{trail.json_insert(connection)} WHERE EXISTS (SELECT FROM written)"
        )
    sql = _updates_with_event[key]
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, f"[{trail.event_json(event)}]"])
        return cursor.rowcount == 1


def _update_with_params(
    alias: str, grant_id: uuid.UUID, seen_version: int, values: dict[str, Any]
) -> tuple[str, list[Any]]:
    key = (alias, tuple(values))
    if key not in _updates:
        _updates[key] = _fenced_update(*key)
    sql, fields = _updates[key]
    connection = connections[alias]
    params = [field.get_db_prep_save(values[field.name], connection) for field in fields]
    pk = Grant._meta.pk
    assert pk is not None
    params += [pk.get_db_prep_value(grant_id, connection), seen_version, Grant.Status.ACTIVE]
    return sql, params


def _fenced_update(alias: str, names: tuple[str, ...]) -> tuple[str, list[Field[Any, Any]]]:
    quote = connections[alias].ops.quote_name
    meta = Grant._meta

    def column(name: str) -> tuple[str, Field[Any, Any]]:
        field = meta.get_field(name)
        # What the ORM would write with more than a plain "column = %s" is not for here.
        assert isinstance(field, Field) and field.concrete and not field.is_relation, name
        assert not hasattr(field, "get_placeholder"), f"{name}: needs its own placeholder"
        return quote(field.get_attname_column()[1]), field

    assigned = [column(name) for name in names]
    values = ", ".join(f"{quoted} = %s" for quoted, _ in assigned)
    assert meta.pk is not None
    fence = (meta.pk.name, "token_version", "status")
    where = " AND ".join(f"{column(name)[0]} = %s" for name in fence)
    # Only the model's own table and column names go into the text, quoted; values are bound.
    sql = f"UPDATE {quote(meta.db_table)} SET {values} WHERE {where}"  # noqa: S608
    return sql, [field for _, field in assigned]


def load(grant_id: Any) -> Grant:
    """The grant with its app and user; raises Grant.DoesNotExist."""
    return grant_with_app_and_user(grant_id)


def load_or_none(grant_id: Any) -> Grant | None:
    try:
        return load(grant_id)
    except Grant.DoesNotExist:
        return None
