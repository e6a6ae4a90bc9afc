"""Shared fixtures: users with different roles, a clean Redis database, the sandbox."""

from __future__ import annotations

import pytest
from django.conf import settings


@pytest.fixture(scope="session", autouse=True)
def clean_redis() -> None:
    """The tests own the Redis database named by REDIS_URL (a dedicated number): start empty."""
    import redis

    redis.Redis.from_url(settings.REDIS_URL).flushdb()


@pytest.fixture
def owner(django_user_model):
    return django_user_model.objects.create_user("alice", "alice@example.com", "alice-broker")


@pytest.fixture
def outsider(django_user_model):
    return django_user_model.objects.create_user("mallory", "mallory@example.com", "mallory-broker")


@pytest.fixture
def local_server():
    from tests.local_http import start_local_server

    server = start_local_server()
    yield server
    server.stop()


@pytest.fixture
def eager_celery(settings):
    """Runs tasks in-process when enqueued (after the commit, like a worker would).

    Exceptions are not propagated: an eager retry raises Retry after running the retry, as a
    worker would log it; tests check outcomes (rows, requests received) instead."""
    from broker.celery import app

    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False
