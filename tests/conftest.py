"""Shared fixtures: users with different roles, a clean Redis database, the sandbox."""

from __future__ import annotations

import os
from html.parser import HTMLParser
from io import StringIO

import pytest
import requests
from django.conf import settings
from django.core.management import call_command
from django.db import connections


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


# -- the sandbox provider and signed-in HTTP sessions ------------------------------------------
# The broker's live server listens on 127.0.0.1 and the sandbox on localhost, so that their
# cookies never mix in one browser.
os.environ.setdefault("DJANGO_LIVE_TEST_SERVER_ADDRESS", "127.0.0.1")
HTTP_TIMEOUT = 15


@pytest.fixture(scope="session")
def sandbox(live_server, tmp_path_factory):
    """The sandbox provider, registered with the live broker (its callbacks point there)."""
    from tests.sandbox_server import start_sandbox

    server = start_sandbox(tmp_path_factory.mktemp("sandbox"), live_server.url)
    yield server
    server.stop()


@pytest.fixture
def sandbox_providers(sandbox, transactional_db, settings, live_server):
    """The sandbox's provider apps loaded into the broker, callbacks on the live server."""
    settings.BROKER_PUBLIC_URL = live_server.url
    call_command("loadproviders", str(sandbox.providers_file), stdout=StringIO())
    return sandbox


class FormInputs(HTMLParser):
    """Hidden inputs and button names of an HTML page's forms."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.inputs: dict[str, str] = {}
        self.buttons: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "input" and values.get("type") == "hidden" and "name" in values:
            self.inputs[values["name"]] = values.get("value", "")
        if tag == "button" and values.get("name"):
            self.buttons.append(values["name"])


def broker_session(base_url: str, username: str, password: str) -> requests.Session:
    """A requests session signed in to the broker through its login form."""
    session = requests.Session()
    page = session.get(f"{base_url}/accounts/login/", timeout=HTTP_TIMEOUT)
    assert page.status_code == 200
    response = session.post(
        page.url,
        data={**FormInputs(page.text).inputs, "username": username, "password": password},
        allow_redirects=False,
        timeout=HTTP_TIMEOUT,
    )
    assert response.status_code == 302, "broker sign-in failed"
    return session


@pytest.fixture
def broker_login(live_server):
    """Signs users in to the live broker: `broker_login("alice", "alice-broker")`.

    The sessions are closed afterwards: a kept-alive connection would keep a server thread,
    and its database connection, open past the test database's teardown (PostgreSQL).
    """
    sessions: list[requests.Session] = []

    def login(username: str, password: str) -> requests.Session:
        sessions.append(broker_session(live_server.url, username, password))
        return sessions[-1]

    yield login
    for session in sessions:
        session.close()


def sandbox_consent(authorize_url: str, username: str, button: str) -> str:
    """In a fresh provider-side session: sign in to the sandbox, press Allow or Deny, and
    return where the sandbox redirects (the broker's callback URL)."""
    session = requests.Session()
    page = session.get(authorize_url, timeout=HTTP_TIMEOUT)
    if "/accounts/login/" in page.url:
        page = session.post(
            page.url,
            data={
                **FormInputs(page.text).inputs,
                "username": username,
                "password": f"{username}-sandbox",
            },
            timeout=HTTP_TIMEOUT,
        )
    assert page.status_code == 200, page.text
    form = FormInputs(page.text)
    assert button in form.buttons, form.buttons
    response = session.post(
        page.url,
        data={**form.inputs, button: button.title()},
        allow_redirects=False,
        timeout=HTTP_TIMEOUT,
    )
    assert response.status_code == 302, response.text
    return response.headers["Location"]


BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser_page(monkeypatch):
    """A fresh headless Chromium page (Debian's chromium, Playwright's sync API)."""
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the test's own ORM checks are
    # synchronous and safe, Django just cannot tell.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=BROWSER_ARGS)
        context = browser.new_context()
        context.set_default_timeout(15_000)
        yield context.new_page()
        context.close()
        browser.close()
        # While Playwright's loop runs, Django keeps the test's ORM connection in a separate
        # per-context slot that its teardown does not close (PostgreSQL then cannot drop the
        # test database): close it here, in that context.
        connections.close_all()
