"""The OpenAPI document cannot drift from the views: every route of broker/api/urls.py is a
declared operation with the method its view answers, and every status an operation declares
(broker/api/openapi.py) is produced here by a real request to its view. A new route or a
newly declared status fails these tests until it gets a probe below."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import jsonschema_rs
import pytest
from django.test import Client
from django.urls import URLPattern, reverse
from django.utils import timezone

from accounts.models import ExternalIdentity, User
from broker.api import subject_tokens, urls
from broker.api.openapi import OPERATIONS, openapi_document
from broker.models import AccessRule, Grant, ServiceClient
from broker.refresh import on_demand
from tests.api.conftest import TOKEN_URL, basic, fetch_token, post_form
from tests.factories import consented_grant, make_app, service_and_secret
from tests.local_http import LocalServer
from tests.subject_idp import AUDIENCE, SubjectIdp

pytestmark = pytest.mark.django_db

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
MYSELF = "https://jira.acme.example/rest/api/2/myself"
THREE_MB = "x" * 3_000_000


# The proxy forwards any method to any path of a provider's API: not an operation of its
# own shape (its contract: docs/api.md "Proxy", tests/api/test_proxy*.py).
UNDECLARED = {"api-proxy"}


def test_every_route_is_declared_with_the_method_its_view_answers(api):
    *named, catch_all = urls.urlpatterns
    assert isinstance(catch_all, URLPattern) and catch_all.name is None
    routes = {pattern.name for pattern in named} - UNDECLARED
    declared: dict[str, set[str]] = {}
    for operation in OPERATIONS:
        declared.setdefault(operation.url_name, set()).add(operation.method)
    assert routes == set(declared)
    for name, methods in declared.items():
        refused = api.generic("OPTIONS", reverse(name))
        assert refused.status_code == 405, name
        assert set(refused["Allow"].split(", ")) == methods, name
    document = api.get(reverse("api-openapi")).json()
    assert set(document["paths"]) == {reverse(name) for name in routes}
    for path, operations in document["paths"].items():
        assert {method.upper() for method in operations} == declared[
            next(name for name in routes if reverse(name) == path)
        ]


@pytest.mark.parametrize(
    "operation", [op for op in OPERATIONS if op.scope], ids=lambda op: op.operation_id
)
def test_a_broker_token_with_only_the_declared_scope_gets_past_the_scope_check(
    api, service_with_secret, operation
):
    service, secret = service_with_secret
    AccessRule.objects.create(
        service=service,
        provider_app=make_app("acme"),
        can_sign=True,
        can_create_connect_links=True,
    )
    token = fetch_token(api, service, secret, scope=operation.scope)["access_token"]
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    response = api.generic(operation.method, reverse(operation.url_name), **headers)
    assert response.status_code not in (401, 403), response.content


@dataclass
class World:
    """A service with rules for three apps, and Alice's grants of them."""

    api: Client
    service: ServiceClient
    secret: str
    atlassian_grant: Grant
    jira_grant: Grant
    # Its token expired; the app's token endpoint is the local server.
    failing_grant: Grant
    provider: LocalServer
    settings: Any
    monkeypatch: pytest.MonkeyPatch
    # The company IdP, started by the first token exchange.
    idp: SubjectIdp | None = None

    def subject_token(self) -> str:
        if self.idp is None:
            self.idp = SubjectIdp()
            self.settings.BROKER_SUBJECT_ISSUERS = [self.idp.issuer]
            subject_tokens.forget_cached_keys()
            owner = User.objects.get(username="alice")
            ExternalIdentity.objects.create(user=owner, issuer=self.idp.issuer, subject="alice-sub")
        return self.idp.token("alice-sub")

    def bearer(self, **form: str) -> dict[str, str]:
        token = fetch_token(self.api, self.service, self.secret, **form)["access_token"]
        return {"HTTP_AUTHORIZATION": f"Bearer {token}"}

    def post_json(self, url_name: str, body: Any, headers: dict[str, str] | None = None) -> Any:
        headers = self.bearer() if headers is None else headers
        return self.api.post(reverse(url_name), body, content_type="application/json", **headers)

    def exchange(self, audience: str = "atlassian", **form: str) -> Any:
        body = {
            "grant_type": EXCHANGE,
            "subject_token": self.subject_token(),
            "subject_token_type": ID_TOKEN,
            "audience": audience,
            **form,
        }
        return post_form(
            self.api, body, HTTP_AUTHORIZATION=basic(self.service.client_id, self.secret)
        )

    def rate_limited(self, call: Callable[[], Any]) -> Any:
        """`call` once more after the service's rate limit is used up."""
        call()
        self.settings.BROKER_API_RATE_LIMIT = 1
        return call()

    def provider_failing(self) -> None:
        self.provider.statuses[:] = [500] * 10


@pytest.fixture
def world(api, owner, atlassian, jira_dc, local_server, settings, monkeypatch):
    settings.BROKER_RETURN_URL_ALLOWLIST = ["https://app.example"]
    service, secret = service_and_secret("prober")
    service.subject_audiences = [AUDIENCE]
    service.save()
    acme = make_app("acme", endpoints={"token": f"{local_server.url}/token"})
    AccessRule.objects.create(
        service=service,
        provider_app=atlassian,
        scopes=["read:me", "read:jira-work"],
        can_create_connect_links=True,
    )
    AccessRule.objects.create(service=service, provider_app=jira_dc, can_sign=True)
    AccessRule.objects.create(service=service, provider_app=acme)
    world = World(
        api=api,
        service=service,
        secret=secret,
        atlassian_grant=consented_grant(owner, atlassian, scopes=["read:me", "read:jira-work"]),
        jira_grant=consented_grant(owner, jira_dc, access_expires_at=None),
        failing_grant=consented_grant(
            owner, acme, access_expires_at=timezone.now() - timedelta(minutes=1)
        ),
        provider=local_server,
        settings=settings,
        monkeypatch=monkeypatch,
    )
    yield world
    if world.idp is not None:
        world.idp.stop()
        subject_tokens.forget_cached_keys()


def reconnect_required(grant: Grant) -> str:
    Grant.objects.filter(pk=grant.pk).update(status=Grant.Status.RECONNECT_REQUIRED)
    return str(grant.pk)


def user_deactivated_meanwhile(world: World) -> None:
    """The race behind a 404 at the token exchange: the user is deactivated after the view
    found her grant, before the refresh engine loads it."""
    real = on_demand.ensure_fresh

    def deactivating(*args: Any, **kwargs: Any) -> Grant:
        User.objects.filter(username="alice").update(is_active=False)
        return real(*args, **kwargs)

    world.monkeypatch.setattr(on_demand, "ensure_fresh", deactivating)


def token_probes() -> dict[int, Callable[[World], Any]]:
    def client_credentials(w: World, **extra: str) -> Any:
        form = {"grant_type": "client_credentials", **extra}
        return post_form(w.api, form, HTTP_AUTHORIZATION=basic(w.service.client_id, w.secret))

    def not_a_form(w: World) -> Any:
        # Answered 400 (RFC 6749 5.2 knows no 415); the hand-written document said 415.
        auth = basic(w.service.client_id, w.secret)
        return w.api.post(TOKEN_URL, "{}", content_type="application/json", HTTP_AUTHORIZATION=auth)

    def failing_exchange(w: World) -> Any:
        w.provider_failing()
        return w.exchange("acme")

    def race_exchange(w: World) -> Any:
        user_deactivated_meanwhile(w)
        return w.exchange("acme")

    def too_large(w: World) -> Any:
        body = urlencode({"grant_type": "client_credentials", "padding": THREE_MB})
        return w.api.post(TOKEN_URL, body, content_type="application/x-www-form-urlencoded")

    def reconnect(w: World) -> Any:
        reconnect_required(w.atlassian_grant)
        return w.exchange()

    return {
        200: client_credentials,
        400: not_a_form,
        401: lambda w: post_form(
            w.api,
            {"grant_type": "client_credentials"},
            HTTP_AUTHORIZATION=basic(w.service.client_id, "wrong"),
        ),
        403: lambda w: w.exchange(scope="write:jira-work"),
        404: race_exchange,
        409: reconnect,
        413: too_large,
        429: lambda w: w.rate_limited(lambda: client_credentials(w)),
        503: failing_exchange,
    }


def bearer_probes(
    url_name: str, method: str, scope: str | None, body: Any = None
) -> dict[int, Callable[[World], Any]]:
    """What every endpoint behind a broker token answers before its view runs."""

    def call(w: World, headers: dict[str, str]) -> Any:
        if method == "GET":
            return w.api.get(reverse(url_name), **headers)
        return w.post_json(url_name, body, headers)

    def rate_limited(w: World) -> Any:
        headers = w.bearer()
        return w.rate_limited(lambda: call(w, headers))

    probes: dict[int, Callable[[World], Any]] = {
        401: lambda w: call(w, {"HTTP_AUTHORIZATION": "Bearer forged"}),
        429: rate_limited,
    }
    if scope is not None:
        # A token with another API scope only.
        other = "grants:read" if scope != "grants:read" else "tokens:read"
        probes[403] = lambda w: call(w, w.bearer(scope=other))
    return probes


def json_body_probes(url_name: str, valid: dict[str, Any]) -> dict[int, Callable[[World], Any]]:
    return {
        413: lambda w: w.post_json(url_name, {**valid, "padding": THREE_MB}),
        415: lambda w: w.api.post(
            reverse(url_name), json.dumps(valid), content_type="text/plain", **w.bearer()
        ),
    }


def access_token_503(w: World) -> Any:
    w.provider_failing()
    return w.post_json("api-access-token", {"grant": str(w.failing_grant.pk)})


SIGNED = {"method": "GET", "url": MYSELF}
LINK = {"user": "alice", "provider": "atlassian", "return_to": "https://app.example/done"}

PROBES: dict[str, dict[int, Callable[[World], Any]]] = {
    "token": token_probes(),
    "listGrants": {
        **bearer_probes("api-grants", "GET", "grants:read"),
        200: lambda w: w.api.get(reverse("api-grants"), **w.bearer()),
        400: lambda w: w.api.get(reverse("api-grants"), {"colour": "red"}, **w.bearer()),
    },
    "accessToken": {
        **bearer_probes("api-access-token", "POST", "tokens:read", {}),
        **json_body_probes("api-access-token", {"grant": str(uuid.uuid4())}),
        200: lambda w: w.post_json("api-access-token", {"grant": str(w.atlassian_grant.pk)}),
        400: lambda w: w.post_json("api-access-token", {"user": "alice", "min_ttl": "60"}),
        403: lambda w: w.post_json(
            "api-access-token", {"grant": str(w.atlassian_grant.pk), "scopes": ["write:jira-work"]}
        ),
        404: lambda w: w.post_json("api-access-token", {"grant": str(uuid.uuid4())}),
        409: lambda w: w.post_json(
            "api-access-token", {"grant": reconnect_required(w.atlassian_grant)}
        ),
        503: access_token_503,
    },
    "sign": {
        **bearer_probes("api-sign", "POST", "requests:sign", SIGNED),
        **json_body_probes("api-sign", SIGNED),
        200: lambda w: w.post_json("api-sign", {**SIGNED, "grant": str(w.jira_grant.pk)}),
        400: lambda w: w.post_json("api-sign", {"method": "GET", "grant": str(w.jira_grant.pk)}),
        # The Atlassian rule does not let the service sign.
        403: lambda w: w.post_json("api-sign", {**SIGNED, "grant": str(w.atlassian_grant.pk)}),
        404: lambda w: w.post_json("api-sign", {**SIGNED, "grant": str(uuid.uuid4())}),
        409: lambda w: w.post_json(
            "api-sign", {**SIGNED, "grant": reconnect_required(w.jira_grant)}
        ),
    },
    "createConnectLink": {
        **bearer_probes("api-connect-links", "POST", "connect-links:create", LINK),
        **json_body_probes("api-connect-links", LINK),
        201: lambda w: w.post_json("api-connect-links", LINK),
        400: lambda w: w.post_json(
            "api-connect-links", {**LINK, "return_to": "https://evil.example/"}
        ),
        # The Jira rule does not let the service create links.
        403: lambda w: w.post_json("api-connect-links", {**LINK, "provider": "jira-acme"}),
        404: lambda w: w.post_json("api-connect-links", {**LINK, "user": "nobody"}),
    },
    "ping": {
        **bearer_probes("api-ping", "GET", None),
        200: lambda w: w.api.get(reverse("api-ping"), **w.bearer()),
    },
    "openapi": {200: lambda w: w.api.get(reverse("api-openapi"))},
}
# These reach the refresh engine's upstream call, which must run outside a transaction.
NEED_COMMITS = {("token", 503), ("accessToken", 503)}


def declared_statuses() -> list[tuple[str, int]]:
    return sorted(
        (operation.operation_id, status)
        for operation in OPERATIONS
        for status in operation.all_answers()
    )


def test_every_declared_status_has_a_probe_and_every_probe_a_declared_status():
    probed = sorted((operation_id, status) for operation_id, by in PROBES.items() for status in by)
    assert probed == declared_statuses()


@pytest.mark.parametrize(
    "operation_id, status",
    [
        pytest.param(
            *declared,
            marks=[pytest.mark.django_db(transaction=True)] if declared in NEED_COMMITS else [],
        )
        for declared in declared_statuses()
    ],
)
def test_the_view_answers_each_declared_status_as_documented(world, operation_id, status):
    response = PROBES[operation_id][status](world)
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"] == "application/json"
    operation = next(op for op in OPERATIONS if op.operation_id == operation_id)
    document = openapi_document()
    answer = document["paths"][reverse(operation.url_name)][operation.method.lower()]["responses"]
    declared = answer[str(status)]
    body_schema = declared["content"]["application/json"]["schema"]
    validator = jsonschema_rs.Draft202012Validator(
        {**body_schema, "components": document["components"]}
    )
    validator.validate(response.json())
    if status >= 400:
        assert set(response.json()) == {"error", "error_description"}
    if "Retry-After" in declared.get("headers", {}):
        assert int(response["Retry-After"]) >= 1
