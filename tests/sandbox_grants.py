"""Real grants from the sandbox without the broker's consent views: sign in at the sandbox,
press Allow, exchange the code with broker.providers.oauth2_client, store with apply_token_response.

Also: the environment for subprocesses (Celery workers, contenders) that must use the
test's database and Redis.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import requests
from authlib.integrations.requests_client import OAuth2Session
from django.db import connection

from broker.consent.oauth2_flow import redirect_uri_for
from broker.models import Grant, ProviderApp
from broker.providers.oauth2_client import exchange_code
from broker.refresh.schedule import apply_token_response

TIMEOUT = 10
PROJECT_ROOT = Path(__file__).resolve().parent.parent
HIDDEN_INPUT = re.compile(r"<input[^>]*>", re.I)
ATTRIBUTE = re.compile(r'(\w[\w-]*)="([^"]*)"')


def signed_in_browser(sandbox, username: str) -> requests.Session:
    browser = requests.Session()
    browser.get(f"{sandbox.url}/accounts/login/", timeout=TIMEOUT)
    response = browser.post(
        f"{sandbox.url}/accounts/login/",
        data={
            "username": username,
            "password": f"{username}-sandbox",
            "csrfmiddlewaretoken": browser.cookies["sandbox_csrftoken"],
        },
        allow_redirects=False,
        timeout=TIMEOUT,
    )
    assert response.status_code == 302, response.text
    return browser


def hidden_inputs(html: str) -> dict[str, str]:
    inputs = {}
    for tag in HIDDEN_INPUT.findall(html):
        attributes = dict(ATTRIBUTE.findall(tag))
        if attributes.get("type") == "hidden" and "name" in attributes:
            inputs[attributes["name"]] = attributes.get("value", "")
    return inputs


def authorization_code(sandbox, app: ProviderApp, redirect_uri: str, username: str) -> str:
    client = OAuth2Session(app.client_id, redirect_uri=redirect_uri, scope=" ".join(app.scopes))
    url, state = client.create_authorization_url(
        app.endpoint("authorize"), **dict(app.catalog_entry.extra_authorize_params)
    )
    browser = signed_in_browser(sandbox, username)
    page = browser.get(url, timeout=TIMEOUT)
    assert page.status_code == 200, page.text
    data = {**hidden_inputs(page.text), "allow": "Allow"}
    response = browser.post(page.url, data=data, allow_redirects=False, timeout=TIMEOUT)
    assert response.status_code == 302, response.text
    query = parse_qs(urlparse(response.headers["Location"]).query)
    assert query["state"] == [state]
    return query["code"][0]


def connect_grant(sandbox, user, *, slug: str = "sandbox", username: str = "alice") -> Grant:
    """A grant holding real tokens the sandbox issued to `username` (its apps must be
    loaded, with BROKER_PUBLIC_URL set to the URL they were registered with: the
    `sandbox_apps` / `reuse_window_apps` fixtures)."""
    app = ProviderApp.objects.get(slug=slug)
    redirect_uri = redirect_uri_for(app)
    code = authorization_code(sandbox, app, redirect_uri, username)
    response = exchange_code(app, code=code, redirect_uri=redirect_uri)
    grant = Grant(
        user=user,
        provider_app=app,
        external_account_id=f"sandbox-{username}",
        account_name=username,
        redirect_uri=redirect_uri,
    )
    apply_token_response(grant, response, refreshed=False)
    grant.save()
    return grant


def refresh_count(sandbox) -> int:
    return sandbox.counters()["token"]["refresh_token"]


def identity_works(sandbox, access_token: str) -> bool:
    response = requests.get(
        f"{sandbox.url}/me", headers={"Authorization": f"Bearer {access_token}"}, timeout=TIMEOUT
    )
    return response.status_code == 200


def digest(token: str | None) -> str:
    return hashlib.sha256((token or "").encode()).hexdigest()


def database_url() -> str:
    """The test database (not the configured one) as a DATABASE_URL for subprocesses."""
    params = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{Path(params['NAME']).resolve()}"
    auth = params["USER"] + (f":{params['PASSWORD']}" if params.get("PASSWORD") else "")
    return f"postgres://{auth}@{params['HOST']}:{params['PORT'] or 5432}/{params['NAME']}"


def subprocess_env(**extra: str) -> dict[str, str]:
    from django.conf import settings

    env = dict(os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DATABASE_URL": database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "BROKER_PUBLIC_URL": settings.BROKER_PUBLIC_URL,
            "PYTHONUNBUFFERED": "1",
            **extra,
        }
    )
    return env
