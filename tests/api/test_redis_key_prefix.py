"""Every key the broker keeps in Redis starts with BROKER_REDIS_KEY_PREFIX, read in one place
(broker.infra.redis_connection.redis_key), so two brokers can share one Redis database."""

from __future__ import annotations

import uuid

import pytest

from broker.infra.redis_connection import redis_client
from broker.refresh import doubt_marks, lock
from tests.api.conftest import basic, post_form

pytestmark = pytest.mark.django_db


def keys_of(pattern: str) -> set[bytes]:
    return set(redis_client().scan_iter(pattern, count=1000))


def test_every_key_the_broker_writes_takes_the_configured_prefix(
    api, grant, rule, bearer, service_with_secret, settings
):
    prefix = f"tenant-{uuid.uuid4().hex[:8]}:"
    settings.BROKER_REDIS_KEY_PREFIX = prefix
    settings.BROKER_API_RATE_LIMIT = 1000
    before = keys_of("broker:*")
    service, _ = service_with_secret
    # A failed client authentication (the failure throttle's counters), a broker token and
    # a served access token (the rate limit's counter, the token-issue metrics), and a
    # refresh's lock and in-flight mark.
    refused = post_form(
        api,
        {"grant_type": "client_credentials"},
        HTTP_AUTHORIZATION=basic(service.client_id, "wrong-secret"),
    )
    assert refused.status_code == 401
    served = api.post(
        "/api/v1/access-token",
        {"grant": str(grant.pk)},
        content_type="application/json",
        **bearer(),
    )
    assert served.status_code == 200
    with lock.refresh_lock(grant.pk, wait=0) as held:
        assert held is not None
        assert doubt_marks.mark_in_flight(grant.pk, grant.token_version)
        written = keys_of(f"{prefix}*")
        doubt_marks.clear_in_flight(grant.pk)
    assert keys_of("broker:*") - before == set()  # nothing under the default prefix
    names = {key.decode().removeprefix(prefix).split(":")[0] for key in written}
    assert {"authfail", "rl", "metrics", "refresh-lock", "refresh-in-flight"} <= names
    redis_client().delete(*keys_of(f"{prefix}*"))
