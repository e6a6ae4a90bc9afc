"""The hot path's precompiled grant query reads exactly what the ORM reads."""

from __future__ import annotations

import uuid

import pytest

from broker.api.grant_lookup import COLUMNS, grant_by_id
from broker.models import Grant
from tests.factories import consented_grant

pytestmark = pytest.mark.django_db


def test_it_matches_the_orm_column_for_column(owner, atlassian, django_assert_num_queries):
    grant = consented_grant(owner, atlassian)
    expected = Grant.objects.select_related("provider_app", "user").get(pk=grant.pk)
    with django_assert_num_queries(1):
        loaded = grant_by_id(str(grant.pk))
        assert loaded is not None
        for name in COLUMNS:
            obj_expected, obj_loaded = expected, loaded
            *path, attname = name.split("__")
            for step in path:
                obj_expected, obj_loaded = getattr(obj_expected, step), getattr(obj_loaded, step)
            assert getattr(obj_loaded, attname) == getattr(obj_expected, attname), name
        assert loaded.pk == grant.pk and loaded.provider_app.pk == atlassian.pk
        assert loaded.user.pk == owner.pk
        assert loaded.access_expires_at.tzinfo is not None
        assert loaded.unseal("access_token") == grant.unseal("access_token")
    # Columns left out load on demand, like the ORM's deferred fields.
    assert loaded.refresh_token_sealed == grant.refresh_token_sealed


def test_an_unknown_id_is_none():
    assert grant_by_id(uuid.uuid4()) is None
