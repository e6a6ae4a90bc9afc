"""Shared fixtures: users with different roles, a clean Redis database, the sandbox."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from django.conf import settings
from django.core.management import call_command
from django.db import connections

# The broker under test listens on 127.0.0.1 and the sandbox on localhost, so a browser
# keeps their cookies apart as it would for two real sites.
os.environ.setdefault("DJANGO_LIVE_TEST_SERVER_ADDRESS", "127.0.0.1")

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
HTTP_TIMEOUT = 10


@pytest.fixture(scope="session", autouse=True)
def clean_redis() -> None:
    """The tests own the Redis database named by REDIS_URL (a dedicated number): start empty.

    Without Redis nothing can pass: stop the whole run at once with the command that
    starts it, rather than one ConnectionError per test."""
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2)
    try:
        client.flushdb()
    except redis.ConnectionError as exc:
        where = client.connection_pool.connection_kwargs
        host, port = where.get("host", "127.0.0.1"), where.get("port", 6379)
        pytest.exit(
            f"Redis is not answering at {settings.REDIS_URL} ({exc}); the tests need it. "
            f"Start it with:\n  redis-server --daemonize yes --bind {host} --port {port} "
            '--save "" --appendonly no\n(or set REDIS_URL to a Redis database the tests may empty)',
            returncode=3,
        )


@pytest.fixture(autouse=True)
def forget_authentication_failures() -> None:
    """Each test starts with no failed authentications counted (broker.api.ratelimit), so
    that the wrong secrets of earlier tests in the same minute do not throttle it."""
    from broker.infra.redis_connection import redis_client, redis_key

    client = redis_client()
    for key in client.scan_iter(redis_key("authfail", "*")):
        client.delete(key)


class KeySetClock:
    """broker.infra.key_sets' clock (time.monotonic), moved on by the test."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def monotonic(self) -> float:
        return self.now

    def pass_refetch_interval(self) -> None:
        self.now += settings.BROKER_JWKS_REFETCH_SECONDS + 1


@pytest.fixture(autouse=True)
def key_set_clock(monkeypatch: pytest.MonkeyPatch) -> KeySetClock:
    """Each test starts with no cached identity provider keys, on a clock it moves."""
    from broker.infra import key_sets

    key_sets.forget()
    clock = KeySetClock()
    monkeypatch.setattr(key_sets, "time", clock)
    return clock


@pytest.fixture
def owner(django_user_model):
    return django_user_model.objects.create_user("alice", "alice@example.com", "alice-broker")


@pytest.fixture
def outsider(django_user_model):
    return django_user_model.objects.create_user("mallory", "mallory@example.com", "mallory-broker")


@pytest.fixture(scope="session")
def sandbox(live_server, tmp_path_factory):
    """The sandbox provider, registered with the live broker's callback URLs."""
    from tests.sandbox_server import start_sandbox

    server = start_sandbox(tmp_path_factory.mktemp("sandbox"), live_server.url)
    yield server
    server.stop()


@pytest.fixture
def sandbox_apps(sandbox, live_server, transactional_db, settings):
    """The sandbox's provider apps loaded into the broker, whose public URL is the live
    server's (so redirect URIs match what the sandbox registered)."""
    from broker.models import ProviderApp

    settings.BROKER_PUBLIC_URL = live_server.url
    call_command("loadproviders", str(sandbox.providers_file), stdout=open(os.devnull, "w"))
    yield {app.slug: app for app in ProviderApp.objects.all()}
    sandbox.faults(mode="none")


@pytest.fixture
def sandbox_providers(sandbox_apps, sandbox):
    """The sandbox (its test switches), with its provider apps loaded into the broker."""
    return sandbox


@pytest.fixture
def sandbox_sso(sandbox, live_server, transactional_db, settings):
    """The live broker signing people in with the sandbox IdP, as `make dev` sets it up."""
    settings.BROKER_PUBLIC_URL = live_server.url
    for name, value in sandbox.sso_settings().items():
        setattr(settings, name, value.split(",") if name.endswith("_GROUPS") else value)
    yield sandbox
    sandbox.set_groups("alice", ["engineering"])


@pytest.fixture
def broker_login(live_server) -> Iterator[Callable[[str, str], requests.Session]]:
    """Signs in to the live broker over HTTP; returns the session (a browser's cookie jar).

    The sessions are closed afterwards: a kept-alive connection would keep a server thread,
    and its database connection, open past the test database's teardown (PostgreSQL).
    """
    sessions: list[requests.Session] = []

    def login(username: str, password: str) -> requests.Session:
        session = requests.Session()
        sessions.append(session)
        session.get(f"{live_server.url}/accounts/login/", timeout=HTTP_TIMEOUT)
        response = session.post(
            f"{live_server.url}/accounts/login/",
            data={
                "username": username,
                "password": password,
                "csrfmiddlewaretoken": session.cookies["csrftoken"],
            },
            allow_redirects=False,
            timeout=HTTP_TIMEOUT,
        )
        assert response.status_code == 302, response.text
        return session

    yield login
    for session in sessions:
        session.close()


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """Debian's headless Chromium through Playwright (never a downloaded browser). Module
    scope: Playwright's loop and the flag below end with the browser tests' module."""
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an asyncio loop on the test thread; the test's own ORM
    # calls are still plain synchronous code, which Django's guard cannot tell. The flag
    # must not outlive these tests (manage.py check --deploy warns about it).
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(
                executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS
            )
            yield chromium
            chromium.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def page(browser) -> Iterator:
    context = browser.new_context()
    context.set_default_timeout(15_000)
    yield context.new_page()
    context.close()
    # While Playwright's loop runs, Django keeps the test's ORM connection in a separate
    # per-context slot that its teardown does not close (PostgreSQL then cannot drop the
    # test database): close it here, in that context.
    connections.close_all()


@pytest.fixture
def browser_page(page):
    return page


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


@pytest.fixture(scope="session")
def sandbox_with_reuse_window(live_server, tmp_path_factory):
    """The sandbox with Atlassian's ten-minute reuse window for consumed refresh tokens
    (tests/sandbox_reuse_window_settings.py), for failures where the broker cannot know
    whether the provider processed a refresh. Same registration as `sandbox`."""
    from tests import sandbox_server

    plain_env = sandbox_server.sandbox_env

    def env_with_reuse_window(*args):
        settings_module = "tests.sandbox_reuse_window_settings"
        return {**plain_env(*args), "DJANGO_SETTINGS_MODULE": settings_module}

    sandbox_server.sandbox_env = env_with_reuse_window
    try:
        server = sandbox_server.start_sandbox(
            tmp_path_factory.mktemp("sandbox-reuse"), live_server.url
        )
    finally:
        sandbox_server.sandbox_env = plain_env
    yield server
    server.stop()


@pytest.fixture
def reuse_window_apps(sandbox_with_reuse_window, live_server, transactional_db, settings):
    """Like `sandbox_apps`, for the sandbox with the reuse window."""
    settings.BROKER_PUBLIC_URL = live_server.url
    call_command("loadproviders", str(sandbox_with_reuse_window.providers_file), verbosity=0)
    yield sandbox_with_reuse_window
    sandbox_with_reuse_window.faults(mode="none")


@pytest.fixture
def celery_retries():
    """The waits tasks asked Celery for, retry by retry: (task name, seconds). An eager
    retry runs at once, but the countdown it was given is what a worker would wait."""
    from celery.signals import task_retry

    waits: list[tuple[str, float]] = []

    def record(sender: Any, request: Any, reason: Any, **kwargs: Any) -> None:
        waits.append((sender.name, reason.when))

    task_retry.connect(record, weak=False)
    yield waits
    task_retry.disconnect(record)


@pytest.fixture
def idp(settings) -> Iterator[Any]:
    """A company IdP whose users' tokens the broker trusts for on-behalf-of calls (token
    exchange, Broker-Subject-Token). The sign-in tests have an `idp` of their own."""
    from broker.api import subject_tokens
    from tests.subject_idp import SubjectIdp

    server = SubjectIdp()
    settings.BROKER_SUBJECT_ISSUERS = [server.issuer]
    subject_tokens.forget_cached_keys()
    yield server
    server.stop()
    subject_tokens.forget_cached_keys()


@pytest.fixture
def redis_sends(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """What this process sends to Redis from now on (`clear()` it to count from a later
    point), one packed entry per send: a pipeline or a command, one round trip. The sends
    themselves go through."""
    import redis.connection

    sends: list[bytes] = []
    send = redis.connection.Connection.send_packed_command

    def counted(self: Any, command: Any, check_health: bool = True) -> None:
        sends.append(command if isinstance(command, bytes | str) else b"".join(command))
        send(self, command, check_health)

    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counted)
    return sends
