"""Fixtures for the client package's tests: the package (clients/python/) talks over real
HTTP to the live broker, which talks to the sandbox provider.

The sandbox here issues access tokens for ten minutes (the session's sandbox: two seconds),
so that the client's caching can be seen; it is registered with the live broker's URL.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable, Iterator
from io import StringIO
from typing import Any

import pytest
import requests
from broker_client import BrokerClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.core.management import call_command

from broker.models import AuditEvent, Grant
from tests.api.conftest import audit_events  # noqa: F401
from tests.consent.test_oauth1_flow import connect
from tests.sandbox_grants import connect_grant
from tests.sandbox_server import SandboxServer, start_sandbox

ACCESS_TOKEN_SECONDS = 600
TIMEOUT = 10


@pytest.fixture(scope="package")
def sandbox(live_server, tmp_path_factory) -> Iterator[SandboxServer]:
    server = start_sandbox(
        tmp_path_factory.mktemp("sandbox-client"),
        live_server.url,
        access_token_seconds=ACCESS_TOKEN_SECONDS,
    )
    yield server
    server.stop()


@pytest.fixture
def broker_url(live_server, transactional_db, settings) -> str:
    """The live broker, whose public URL (the audience of client assertions) is its own."""
    settings.BROKER_PUBLIC_URL = live_server.url
    return str(live_server.url)


def create_service(*options: str) -> dict[str, Any]:
    """`manage.py createserviceclient --json`, as an operator registers a service."""
    out = StringIO()
    call_command("createserviceclient", "Client tests", *options, "--json", stdout=out)
    created: dict[str, Any] = json.loads(out.getvalue())
    return created


def add_rule(client_id: str, provider: str, *options: str) -> None:
    call_command("addaccessrule", client_id, "--provider", provider, *options, stdout=StringIO())


def private_pem(key: Any) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def public_pem(key: Any) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture
def service(broker_url, sandbox_apps) -> dict[str, Any]:
    """A service client with a secret, allowed alice's sandbox grants (OAuth 2.0 and 1.0a)."""
    created = create_service()
    add_rule(created["client_id"], "sandbox", "--connect-links")
    add_rule(created["client_id"], "sandbox-jira", "--sign")
    return created


@pytest.fixture
def make_client(broker_url) -> Iterator[Callable[..., BrokerClient]]:
    clients: list[BrokerClient] = []

    def make(client_id: str, **credentials: Any) -> BrokerClient:
        client = BrokerClient(broker_url, client_id, timeout=TIMEOUT, **credentials)
        clients.append(client)
        return client

    yield make
    for client in clients:  # no kept-alive connection may outlive the test database
        client.close()


@pytest.fixture
def broker(service, make_client) -> BrokerClient:
    return make_client(service["client_id"], client_secret=service["client_secret"])


@pytest.fixture
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def grant(sandbox_apps, sandbox, owner) -> Grant:
    """alice's OAuth 2.0 grant at the sandbox, holding real tokens."""
    return connect_grant(sandbox, owner)


@pytest.fixture
def jira_grant(sandbox_apps, owner, broker_login, live_server) -> Grant:
    """alice's OAuth 1.0a grant at the sandbox's Jira, made through the broker's consent."""
    callback = connect(broker_login("alice", "alice-broker"), live_server.url, "sandbox-jira")
    assert callback.status_code == 302, callback.text
    return Grant.objects.get(user=owner, provider_app__slug="sandbox-jira")


def sandbox_app(sandbox: SandboxServer, slug: str) -> dict[str, Any]:
    app: dict[str, Any] = tomllib.loads(sandbox.providers_file.read_text())["apps"][slug]
    return app


def expire_at_provider(sandbox: SandboxServer, access_token: str) -> None:
    """Ends alice's access tokens at the sandbox (refresh tokens live on); the broker does
    not know, so it still holds `access_token` as valid."""
    sandbox.expire_access_tokens("alice")
    me = requests.get(
        f"{sandbox.url}/me", headers={"Authorization": f"Bearer {access_token}"}, timeout=TIMEOUT
    )
    assert me.status_code == 401


def events(action: str, client_id: str) -> list[AuditEvent]:
    return audit_events(action=action, service=client_id)


def count(action: str, client_id: str) -> int:
    return len(events(action, client_id))
