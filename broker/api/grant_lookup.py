"""The access-token hot path's one database query: a grant with its app and user, by id.

Building this SELECT through the ORM costs about three times its round trip to the
database, so the ORM compiles it once per process and database alias; each call only binds
the id, runs it, and lets the same compiler convert the row (the backend's own converters:
UUIDs, datetimes, JSON) before the model instances are made with `Model.from_db`.
"""

from __future__ import annotations

import uuid
from functools import lru_cache
from typing import Any

from django.db import connections, router
from django.db.models.sql.compiler import SQLCompiler

from accounts.models import User
from broker.models import Grant, ProviderApp

# Only what an access-token answer needs; anything else loads on first access (deferred).
COLUMNS = (
    "status",
    "scopes",
    "resources",
    "external_account_id",
    "account_name",
    "account_email",
    "access_token_sealed",
    "access_expires_at",
    # Read with the token it versions: the refresh-in-doubt check compares it with the
    # in-flight mark (loaded later, it could belong to a token committed since).
    "token_version",
    "consented_at",
    "last_refreshed_at",
    "last_used_at",
    "last_used_by_id",
    "provider_app__slug",
    "provider_app__kind",
    "provider_app__enabled",
    "provider_app__scopes",
    "provider_app__base_url",
    "provider_app__endpoints",
    "user__username",
    "user__is_active",
)


@lru_cache(maxsize=4)
def _compiled(alias: str) -> tuple[SQLCompiler, str]:
    query = (
        Grant.objects.using(alias)
        .select_related("provider_app", "user")
        .only(*COLUMNS)
        .filter(pk=uuid.UUID(int=0))
        .order_by()[:1]
    ).query
    compiler = query.get_compiler(using=alias)
    sql, params = compiler.as_sql()
    assert len(params) == 1, "the grant id must be the query's only parameter"
    return compiler, sql


def grant_by_id(grant_id: uuid.UUID | str) -> Grant | None:
    """The grant (with `provider_app` and `user` loaded), or None."""
    alias = router.db_for_read(Grant)
    compiler, sql = _compiled(alias)
    connection = connections[alias]
    pk = Grant._meta.pk
    assert pk is not None
    with connection.cursor() as cursor:
        cursor.execute(sql, [pk.get_db_prep_value(uuid.UUID(str(grant_id)), connection)])
        raw = cursor.fetchone()
    if raw is None:
        return None
    row = next(iter(compiler.results_iter(results=[[raw]])))
    columns: dict[type, tuple[list[str], list[Any]]] = {}
    for (column, _sql, _alias), value in zip(compiler.select, row, strict=True):
        names, values = columns.setdefault(column.target.model, ([], []))
        names.append(column.target.attname)
        values.append(value)
    grant = Grant.from_db(alias, *columns[Grant])
    grant.provider_app = ProviderApp.from_db(alias, *columns[ProviderApp])
    grant.user = User.from_db(alias, *columns[User])
    return grant
