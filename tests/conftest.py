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


def _start_sandbox(data_dir, broker_url: str, settings_module: str | None = None):
    from tests import sandbox_server

    if settings_module is None:
        server = sandbox_server.start_sandbox(data_dir, broker_url)
    else:
        plain_env = sandbox_server.sandbox_env

        def env_with_settings(*args):
            return {**plain_env(*args), "DJANGO_SETTINGS_MODULE": settings_module}

        sandbox_server.sandbox_env = env_with_settings
        try:
            server = sandbox_server.start_sandbox(data_dir, broker_url)
        finally:
            sandbox_server.sandbox_env = plain_env
    server.broker_url = broker_url
    return server


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory, live_server):
    """The sandbox provider (strict: a superseded refresh token kills the token family)."""
    server = _start_sandbox(tmp_path_factory.mktemp("sandbox"), live_server.url)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sandbox_with_reuse_window(tmp_path_factory, live_server):
    """The sandbox with Atlassian's ten-minute reuse window for consumed refresh tokens."""
    server = _start_sandbox(
        tmp_path_factory.mktemp("sandbox-reuse"),
        live_server.url,
        settings_module="tests.sandbox_reuse_window_settings",
    )
    yield server
    server.stop()
