"""Redis Sentinel (DESIGN.md "Deployment"): with BROKER_REDIS_SENTINELS set, the broker's
Redis clients, Django's cache and Celery's broker follow the master through a failover, against
a real group of a master, a replica and three sentinels. REDIS_URL's host and port name
nothing that listens: only its database number counts."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
import redis
from django.core.cache import caches

from broker.infra.redis_connection import redis_client
from broker.refresh.redis_keys import lock_redis
from tests.infra.redis_sentinels import (
    MASTER_NAME,
    SentinelGroup,
    fail_over,
    free_port,
    sentinel_group,
    server,
)
from tests.processes import python_output, wait_until
from tests.test_settings import start

pytestmark = pytest.mark.slow
DB = 3


@pytest.fixture
def sentinels(tmp_path, settings):
    with sentinel_group(tmp_path) as group:
        settings.BROKER_REDIS_SENTINELS = tuple(("127.0.0.1", port) for port in group.sentinels)
        settings.BROKER_REDIS_SENTINEL_MASTER = MASTER_NAME
        settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/{DB}"
        yield group


def test_the_broker_client_follows_the_master_through_a_failover(sentinels: SentinelGroup):
    client = redis_client()
    client.set("test:where", "before")
    old = sentinels.master_port()
    assert server(old, DB).get("test:where") == b"before"

    new = fail_over(sentinels)

    # The same client, whose connection still points at the old master (now a replica).
    assert redis_client() is client
    client.set("test:where", "after")
    assert server(new, DB).get("test:where") == b"after"
    lock_redis().set("test:lock", "1")
    assert server(new, DB).get("test:lock") == b"1"


def test_the_broker_client_follows_when_the_master_is_killed_under_load(
    sentinels: SentinelGroup,
):
    client = redis_client()
    errors: dict[str, int] = {}
    written: list[float] = []
    stop = threading.Event()

    def write() -> None:
        while not stop.is_set():
            try:
                client.incr("test:count")
                written.append(time.monotonic())
            except redis.RedisError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            time.sleep(0.01)

    writers = [threading.Thread(target=write) for _ in range(4)]
    for writer in writers:
        writer.start()
    try:
        wait_until(lambda: len(written) > 20, 10, "writes before the kill")
        old = sentinels.master_port()
        sentinels.servers[old].kill()
        killed_at = time.monotonic()
        new = sentinels.wait_for_new_master(old)
        wait_until(
            lambda: written[-1] > killed_at and server(new, DB).exists("test:count"),
            20,
            "writes on the new master",
        )
    finally:
        stop.set()
        for writer in writers:
            writer.join()
    before = server(new, DB).get("test:count")
    client.incr("test:count")
    assert int(server(new, DB).get("test:count") or 0) == int(before or 0) + 1
    # Writes stopped only while no master answered; none went anywhere but a master.
    assert set(errors) <= {"ConnectionError", "TimeoutError", "ReadOnlyError"}, errors


def test_the_cache_follows_the_master(sentinels: SentinelGroup, settings):
    settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": settings.REDIS_URL}}
    cache = caches["default"]
    cache.set("where", "before")
    old = sentinels.master_port()
    assert server(old, DB).keys("broker:*where") != []

    new = fail_over(sentinels)

    cache.set("where", "after")
    assert cache.get("where") == "after"
    assert server(new, DB).keys("broker:*where") != []


CELERY_PUT = """
import json
import django
django.setup()
from broker.celery import app
with app.connection_for_write() as connection:
    queue = connection.SimpleQueue("test-sentinel")
    queue.put({"n": 1})
    queue.close()
print(json.dumps({"url": app.conf.broker_url, "options": app.conf.broker_transport_options}))
"""


def celery_put(group: SentinelGroup) -> dict[str, object]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/{DB}",
        "BROKER_REDIS_SENTINELS": group.sentinel_setting,
        "BROKER_REDIS_SENTINEL_MASTER": MASTER_NAME,
    }
    env.pop("CELERY_BROKER_URL", None)
    return dict(json.loads(python_output(CELERY_PUT, env)))


def test_celery_sends_to_the_master_through_the_sentinels(sentinels: SentinelGroup):
    conf = celery_put(sentinels)
    assert str(conf["url"]).startswith("sentinel://")
    assert conf["options"] == {"visibility_timeout": 3600, "master_name": MASTER_NAME}
    old = sentinels.master_port()
    assert server(old, DB).llen("test-sentinel") == 1

    new = fail_over(sentinels)

    celery_put(sentinels)
    assert server(new, DB).llen("test-sentinel") == 2


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BROKER_REDIS_SENTINELS": "sentinel-1"}, "BROKER_REDIS_SENTINELS: 'sentinel-1' is not"),
        ({"BROKER_REDIS_SENTINELS": "s1:26379"}, "set together or not at all"),
        ({"BROKER_REDIS_SENTINEL_MASTER": "broker"}, "set together or not at all"),
    ],
)
def test_a_half_or_malformed_sentinel_setting_stops_start_up(env, message):
    result = start(
        SECRET_KEY="x" * 60,
        BROKER_ENCRYPTION_KEYS="k1:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        BROKER_PUBLIC_URL="https://broker.example.com",
        **env,
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert "ImproperlyConfigured" in result.stderr


def test_celery_gets_the_password_and_database_of_redis_url_for_every_sentinel():
    from broker.infra.redis_connection import celery_broker_url, parse_sentinel_addresses

    sentinels = parse_sentinel_addresses(["10.0.0.1:26379", " [::1]:26380"])
    assert sentinels == (("10.0.0.1", 26379), ("::1", 26380))
    assert celery_broker_url("redis://:s3cret@ignored:6379/4", sentinels) == (
        "sentinel://:s3cret@10.0.0.1:26379/4;sentinel://:s3cret@[::1]:26380/4"
    )
    assert celery_broker_url("redis://127.0.0.1:6379/4", ()) == "redis://127.0.0.1:6379/4"
