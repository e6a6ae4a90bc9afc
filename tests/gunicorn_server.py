"""The broker under gunicorn with gunicorn.conf.py, as deployed, on this test run's
database and Redis (tests.sandbox_grants.subprocess_env), on a free loopback port; a
service to call it with, and that service's broker token over HTTP."""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from broker.models import AccessRule, ProviderApp, ServiceClient
from broker.service_identity import service_secrets
from tests import processes
from tests.sandbox_grants import subprocess_env
from tests.sandbox_server import free_port


@contextmanager
def gunicorn(log_file: Path, **env: str) -> Iterator[str]:
    """Runs gunicorn (from the working directory, so it reads gunicorn.conf.py) with `env`
    on top of the test's environment; yields its URL, stops it afterwards."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with processes.running(
        [str(Path(sys.executable).parent / "gunicorn"), "--bind", f"127.0.0.1:{port}"],
        log_file,
        lambda: processes.answers(f"{url}/healthz"),
        "gunicorn to answer",
        env=subprocess_env(**env),
    ):
        yield url


def service_for(app: ProviderApp, name: str) -> tuple[str, str]:
    """A service allowed the app's scopes for every user: (client id, secret)."""
    service = ServiceClient.objects.create(client_id=f"{name}-{secrets.token_hex(4)}", name=name)
    secret = service_secrets.new_secret(service)
    AccessRule.objects.create(service=service, provider_app=app, scopes=list(app.scopes))
    return service.client_id, secret


def token_request(url: str, client_id: str, secret: str, timeout: float = 30) -> requests.Response:
    """A broker token request to the broker at `url` (client credentials, RFC 6749 4.4)."""
    return requests.post(
        f"{url}/api/v1/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(client_id, secret),
        timeout=timeout,
    )


def broker_token(url: str, client_id: str, secret: str) -> str:
    """The broker token of a token request that must succeed."""
    response = token_request(url, client_id, secret)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])
