"""The OpenAPI document is served, is valid OpenAPI 3.1, and matches the behaviour:
Schemathesis drives every operation through the WSGI app (bounded) with a valid broker
token, and checks that nothing answers 5xx and every response matches the document."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings

from broker.models import AccessRule
from broker.wsgi import application
from tests.api.conftest import fetch_token
from tests.factories import consented_grant, service_and_secret

pytestmark = pytest.mark.django_db

MAX_EXAMPLES = 25


def test_the_document_is_served_and_lists_every_endpoint(api):
    response = api.get("/api/v1/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"] == "3.1.0"
    assert set(document["paths"]) == {
        "/api/v1/oauth/token",
        "/api/v1/grants",
        "/api/v1/access-token",
        "/api/v1/sign",
        "/api/v1/connect-links",
        "/api/v1/ping",
        "/api/v1/openapi.json",
    }
    access = document["paths"]["/api/v1/access-token"]["post"]
    fields = access["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert set(fields) == {"grant", "user", "provider", "scopes", "min_ttl", "force_refresh"}


@contextmanager
def database_kept_open():
    """Raw WSGI calls would close the test's database connection after each request (Django's
    test client disconnects the same handlers while it runs)."""
    for signal in (request_started, request_finished):
        signal.disconnect(close_old_connections)
    try:
        yield
    finally:
        for signal in (request_started, request_finished):
            signal.connect(close_old_connections)


def test_the_api_behaves_as_its_openapi_document_says(api, owner, atlassian, jira_dc):
    consented_grant(owner, atlassian)
    consented_grant(owner, jira_dc, access_expires_at=None)
    service, secret = service_and_secret()
    AccessRule.objects.create(
        service=service, provider_app=atlassian, can_create_connect_links=True
    )
    AccessRule.objects.create(service=service, provider_app=jira_dc, can_sign=True)
    token = fetch_token(api, service, secret)["access_token"]
    headers = {"Authorization": f"Bearer {token}"}

    with database_kept_open():
        schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", application)
        checked = run_every_operation(schema, headers)
    # Schemathesis leaves out the document's own operation.
    assert sorted(checked) == [
        "GET /api/v1/grants",
        "GET /api/v1/ping",
        "POST /api/v1/access-token",
        "POST /api/v1/connect-links",
        "POST /api/v1/oauth/token",
        "POST /api/v1/sign",
    ]


def run_every_operation(schema, headers) -> list[str]:
    checked = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @hypothesis_settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def check(case) -> None:
            if case.query:
                # A page cursor is opaque: made-up ones are refused (400), and those the API
                # issues are followed in tests/api/test_grant_list_pages.py.
                case.query.pop("cursor", None)
            case.call_and_validate(headers=headers)

        check()
        checked.append(operation.label)
    return checked
