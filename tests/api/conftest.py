"""Fixtures for the internal API tests: provider apps, grants, services, broker tokens."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import pytest
from django.contrib.auth.models import Group
from django.test import Client

from accounts.models import ExternalIdentity
from broker.models import AccessRule, AuditEvent, Grant, ProviderApp, ServiceClient
from tests.factories import consented_grant, service_and_secret
from tests.subject_idp import AUDIENCE

TOKEN_URL = "/api/v1/oauth/token"
ATLASSIAN_SCOPES = ["read:me", "read:jira-work", "write:jira-work", "offline_access"]
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"


def metric_value(name: str, **labels: str) -> float:
    """A sample as /metrics shows it, e.g. broker_token_issues_total (0 when absent)."""
    from django.test import override_settings
    from prometheus_client.parser import text_string_to_metric_families

    with override_settings(BROKER_METRICS_TOKEN="scrape", BROKER_METRICS_ALLOWED_NETWORKS=[]):
        text = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer scrape").content.decode()
    return next(
        (
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and sample.labels == labels
        ),
        0,
    )


def token_issues(service: ServiceClient, outcome: str) -> float:
    return metric_value("broker_token_issues_total", service=service.client_id, outcome=outcome)


def audit_events(**filters: Any) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(**filters).order_by("at", "id"))


@pytest.fixture
def api() -> Client:
    return Client()


@pytest.fixture
def atlassian(db) -> ProviderApp:
    return ProviderApp.objects.create(
        slug="atlassian",
        kind="atlassian",
        name="Atlassian",
        client_id="abc",
        scopes=ATLASSIAN_SCOPES,
    )


@pytest.fixture
def other_app(db) -> ProviderApp:
    return ProviderApp.objects.create(
        slug="gitlab",
        kind="oauth2",
        name="GitLab",
        client_id="gl",
        scopes=["api"],
        endpoints={"authorize": "https://gitlab.example/oauth/authorize"},
    )


@pytest.fixture
def local_app(db, local_server) -> ProviderApp:
    """An OAuth 2.0 app whose token endpoint is the local fake (`local_server`)."""
    return ProviderApp.objects.create(
        slug="acme",
        kind="oauth2",
        name="Acme",
        client_id="acme-client",
        scopes=["read", "write"],
        endpoints={
            "authorize": "https://acme.example/authorize",
            "token": f"{local_server.url}/token",
        },
    )


@pytest.fixture
def jira_dc(db) -> ProviderApp:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    app = ProviderApp(
        slug="jira-acme",
        kind="jira-dc-oauth1",
        name="Jira (Acme)",
        client_id="broker",
        base_url="https://jira.acme.example",
        signature_method="RSA-SHA1",
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    app.seal("private_key", pem)
    app.save()
    return app


@pytest.fixture
def grant(owner, atlassian) -> Grant:
    """Alice's grant, carrying exactly the scopes the `rule` fixture allows."""
    return consented_grant(owner, atlassian, scopes=["read:me", "read:jira-work"])


def basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def post_form(api: Client, form: dict[str, str], **headers: Any) -> Any:
    """A token request as RFC 6749 wants it: application/x-www-form-urlencoded."""
    return api.post(
        TOKEN_URL, urlencode(form), content_type="application/x-www-form-urlencoded", **headers
    )


def fetch_token(api: Client, service: ServiceClient, secret: str, **form: str) -> dict[str, Any]:
    response = post_form(
        api,
        {"grant_type": "client_credentials", **form},
        HTTP_AUTHORIZATION=basic(service.client_id, secret),
    )
    assert response.status_code == 200, response.content
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture
def alice(owner, idp):
    """The owner, whom the company IdP (`idp`) knows as "alice-sub"."""
    ExternalIdentity.objects.create(user=owner, issuer=idp.issuer, subject="alice-sub")
    return owner


@pytest.fixture
def assistant(atlassian) -> tuple[ServiceClient, str]:
    """A chat assistant that may use Atlassian tokens only for the user it acts for."""
    service, secret = service_and_secret("assistant")
    service.subject_audiences = [AUDIENCE]
    service.save()
    AccessRule.objects.create(
        service=service,
        provider_app=atlassian,
        scopes=["read:me", "read:jira-work"],
        on_behalf_of=True,
    )
    return service, secret


def exchange(
    api: Client, caller: tuple[ServiceClient, str], subject_token: str, **form: str
) -> Any:
    """Token exchange (RFC 8693) by `caller` (service, secret) of the IdP's ID token for the
    user's Atlassian token."""
    service, secret = caller
    body = {
        "grant_type": EXCHANGE,
        "subject_token": subject_token,
        "subject_token_type": ID_TOKEN,
        "audience": "atlassian",
        **form,
    }
    return post_form(api, body, HTTP_AUTHORIZATION=basic(service.client_id, secret))


def proxy_headers(api: Client, caller: tuple[ServiceClient, str]) -> dict[str, str]:
    """The headers of a proxied call by `caller` (service, secret) for alice, with a broker
    token fetched now."""
    token = fetch_token(api, *caller)["access_token"]
    return {"HTTP_AUTHORIZATION": f"Bearer {token}", "HTTP_BROKER_USER": "alice"}


def body_of(response: Any) -> bytes:
    """A test client response's whole body, streamed or not."""
    return b"".join(response.streaming_content) if response.streaming else response.content


@pytest.fixture
def service_with_secret(db) -> tuple[ServiceClient, str]:
    return service_and_secret()


@pytest.fixture
def rule(service_with_secret, atlassian) -> AccessRule:
    service, _ = service_with_secret
    return AccessRule.objects.create(
        service=service,
        provider_app=atlassian,
        scopes=["read:me", "read:jira-work"],
        can_create_connect_links=True,
    )


@pytest.fixture
def bearer(api, service_with_secret) -> Callable[..., dict[str, str]]:
    """Headers with a fresh broker token of the service (after its rules exist)."""

    def headers(**form: str) -> dict[str, str]:
        service, secret = service_with_secret
        token = fetch_token(api, service, secret, **form)["access_token"]
        return {"HTTP_AUTHORIZATION": f"Bearer {token}"}

    return headers


@pytest.fixture
def group(db) -> Group:
    return Group.objects.create(name="engineering")
