"""The proxy over real HTTP: a service calls the live broker, which calls the sandbox
provider (Atlassian Cloud's API paths, Jira Data Center's) with real tokens. The sandbox
counts every request it receives, so each test can say how often a call reached it, or
that it never did."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from io import StringIO
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from django.core.management import call_command

from broker.consent.api_tokens import ApiTokenForm, store_api_token
from broker.infra import outbound_http
from broker.models import AccessRule, Grant, ProviderApp
from tests.api.conftest import audit_events
from tests.factories import service_and_secret
from tests.sandbox_grants import connect_grant, refresh_count
from tests.sandbox_server import SandboxServer, start_sandbox
from tests.test_sandbox_provider import oauth1_dance, read_toml

pytestmark = [pytest.mark.sandbox]

CLOUD_ID = "6f1c2a0e-5b7d-4c1e-9a4f-0d3e8b7a1c01"  # the sandbox's first site
JIRA = f"ex/jira/{CLOUD_ID}/rest/api/3"
TIMEOUT = 10


@pytest.fixture(scope="module")
def provider(live_server, tmp_path_factory) -> Iterator[SandboxServer]:
    """The sandbox with hour-long tokens: a token ends only when a test ends it."""
    server = start_sandbox(
        tmp_path_factory.mktemp("proxy-sandbox"), live_server.url, access_token_seconds=3600
    )
    yield server
    server.stop()


@pytest.fixture
def apps(provider, live_server, transactional_db, settings) -> dict[str, Any]:
    settings.BROKER_PUBLIC_URL = live_server.url
    call_command("loadproviders", str(provider.providers_file), stdout=StringIO())
    yield read_toml(provider.providers_file)["apps"]
    provider.faults(mode="none")


@pytest.fixture
def cloud_grant(provider, apps, owner) -> Grant:
    return connect_grant(provider, owner, slug="sandbox")


@pytest.fixture
def jira_grant(provider, apps, owner) -> Grant:
    session = oauth1_dance(provider, apps, "sandbox-jira")
    grant = Grant(
        user=owner,
        provider_app=ProviderApp.objects.get(slug="sandbox-jira"),
        external_account_id="alice-jira",
    )
    grant.seal("access_token", session.token["oauth_token"])
    grant.seal("token_secret", session.token["oauth_token_secret"])
    grant.save()
    return grant


class Service:
    """A service calling the live broker over HTTP, as `Broker-User: alice`."""

    def __init__(self, broker_url: str, **rule: Any) -> None:
        self.client, secret = service_and_secret("proxy-caller")
        for slug in ("sandbox", "sandbox-jira"):
            AccessRule.objects.create(
                service=self.client, provider_app=ProviderApp.objects.get(slug=slug), **rule
            )
        self.broker_url = broker_url
        self.http = requests.Session()
        answer = self.http.post(
            f"{broker_url}/api/v1/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=(self.client.client_id, secret),
            timeout=TIMEOUT,
        )
        assert answer.status_code == 200, answer.text
        self.token = answer.json()["access_token"]
        self.headers = {"Authorization": f"Bearer {self.token}", "Broker-User": "alice"}

    def call(self, method: str, app: str, path: str, **kwargs: Any) -> requests.Response:
        return self.http.request(
            method,
            f"{self.broker_url}/api/v1/proxy/{app}/{path}",
            headers={**self.headers, **kwargs.pop("headers", {})},
            timeout=TIMEOUT,
            **kwargs,
        )


@pytest.fixture
def service(apps, live_server) -> Iterator[Service]:
    service = Service(live_server.url)
    yield service
    service.http.close()


def seen(provider: SandboxServer, prefix: str = "") -> dict[str, int]:
    """The requests the sandbox received (but the consent and token endpoints')."""
    return {
        name: count
        for name, count in provider.counters()["requests"].items()
        if name.split(" ", 1)[1].startswith(("/ex/", "/rest/api/", "/_media/", "/me", "/admin"))
        and name.split(" ", 1)[1].startswith(prefix or "/")
    }


def test_get_and_post_with_an_oauth2_grant(provider, cloud_grant, service):
    provider.reset_counters()
    myself = service.call("GET", "sandbox", f"{JIRA}/myself")
    assert myself.status_code == 200, myself.text
    assert myself.json()["accountId"] == "sandbox-alice" and "Broker-Error" not in myself.headers

    search = service.call("POST", "sandbox", f"{JIRA}/search?maxResults=5", json={"jql": "a=1"})
    assert search.status_code == 200, search.text
    assert search.json() == {**search.json(), "jql": "a=1", "query": {"maxResults": "5"}}
    assert seen(provider) == {f"GET /{JIRA}/myself": 1, f"POST /{JIRA}/search": 1}
    assert refresh_count(provider) == 0
    token = cloud_grant.unseal("access_token")
    assert token not in myself.text and token not in search.text


def test_get_and_post_with_an_oauth1_grant_and_data_centers_xsrf_header(
    provider, apps, jira_grant, service
):
    provider.reset_counters()
    myself = service.call("GET", "sandbox-jira", "rest/api/2/myself")
    assert myself.status_code == 200, myself.text
    assert myself.json()["name"] == "alice"

    created = service.call("POST", "sandbox-jira", "rest/api/2/issue", json={"summary": "Hi"})
    assert created.status_code == 201, created.text
    assert created.json()["fields"] == {"summary": "Hi"}
    # A form body is part of the signature (RFC 5849 3.4.1.3.1), query too.
    echoed = service.call("PUT", "sandbox-jira", "rest/api/2/echo?a=1", data={"x": "y & z"})
    assert echoed.status_code == 200, echoed.text
    assert (echoed.json()["query"], echoed.json()["form"]) == ({"a": "1"}, {"x": "y & z"})
    assert seen(provider) == {
        "GET /rest/api/2/myself": 1,
        "POST /rest/api/2/issue": 1,
        "PUT /rest/api/2/echo": 1,
    }

    # The sandbox does demand the header: the same write, signed but without it.
    direct = oauth1_dance(provider, apps, "sandbox-jira").post(
        f"{apps['sandbox-jira']['base_url']}/rest/api/2/issue", json={"summary": "Hi"}
    )
    assert direct.status_code == 403 and "XSRF" in direct.text


def test_a_token_expired_at_the_provider_is_refreshed_once_and_the_call_replayed(
    provider, cloud_grant, service
):
    provider.expire_access_tokens("alice")  # the broker still believes it valid for an hour
    provider.reset_counters()
    version = cloud_grant.token_version

    search = service.call("POST", "sandbox", f"{JIRA}/search", json={"jql": "project = ACME"})

    assert search.status_code == 200, search.text
    assert search.json()["jql"] == "project = ACME"  # the body, sent again
    assert refresh_count(provider) == 1
    assert seen(provider) == {f"POST /{JIRA}/search": 2}
    cloud_grant.refresh_from_db()
    assert cloud_grant.token_version == version + 1
    [event] = [
        e for e in audit_events(action="proxy.called") if e.detail["path"].endswith("search")
    ]
    assert event.detail["refreshed"] is True and event.detail["status"] == 200

    again = service.call("GET", "sandbox", f"{JIRA}/myself")
    assert again.status_code == 200 and refresh_count(provider) == 1


def test_concurrent_calls_on_an_expired_token_share_one_refresh(provider, cloud_grant, service):
    provider.expire_access_tokens("alice")
    provider.reset_counters()
    statuses: list[int] = []
    start = threading.Barrier(4)

    def call() -> None:
        start.wait(timeout=TIMEOUT)
        statuses.append(service.call("GET", "sandbox", f"{JIRA}/myself").status_code)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert statuses == [200, 200, 200, 200]
    assert refresh_count(provider) == 1


def test_scope_does_not_match_is_403_insufficient_scope_and_no_refresh(
    provider, cloud_grant, service
):
    provider.reset_counters()
    version = cloud_grant.token_version

    response = service.call("POST", "sandbox", f"{JIRA}/issue", json={"fields": {}})

    assert response.status_code == 403
    assert response.headers["Broker-Error"] == "insufficient_scope"
    assert response.json()["error"] == "insufficient_scope"
    assert "read:jira-work" in response.json()["error_description"]
    assert refresh_count(provider) == 0
    assert seen(provider) == {f"POST /{JIRA}/issue": 1}
    cloud_grant.refresh_from_db()
    assert cloud_grant.token_version == version


def test_method_and_path_rules_deny_with_nothing_forwarded(
    provider, apps, cloud_grant, live_server
):
    service = Service(
        live_server.url, proxy_methods=["GET"], proxy_paths=["/ex/jira/*/rest/api/3/myself"]
    )
    provider.reset_counters()

    post = service.call("POST", "sandbox", f"{JIRA}/search", json={"jql": "x"})
    other_path = service.call("GET", "sandbox", f"{JIRA}/filler?bytes=1")

    for response in (post, other_path):
        assert response.status_code == 403
        assert response.headers["Broker-Error"] == "access_denied"
    assert seen(provider) == {}
    assert service.call("GET", "sandbox", f"{JIRA}/myself").status_code == 200
    assert seen(provider) == {f"GET /{JIRA}/myself": 1}


def raw_get(
    broker_url: str, path: str, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    """A request line sent exactly as written (requests would remove dot segments or
    normalise it otherwise), and the answer: status, headers, body."""
    parts = urlsplit(broker_url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=TIMEOUT)
    try:
        connection.putrequest("GET", path, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


@pytest.mark.parametrize(
    "path",
    [
        f"sandbox/{JIRA}/../../../../../admin/",
        f"sandbox/{JIRA}/%2e%2e/%2e%2e/myself",
        f"sandbox/{JIRA}/..%2f..%2fmyself",
        f"sandbox/{JIRA}/%252e%252e/myself",
        "sandbox//localhost:1/ex/jira",
        "sandbox/@localhost:1/me",
        "sandbox/%40localhost:1/me",
        "sandbox/\\\\localhost:1/me",
        "sandbox/%5c%5clocalhost:1/me",
        f"sandbox/{JIRA}/./myself",
        "sandbox/http:%2f%2flocalhost:1/me",
    ],
)
def test_traversal_and_host_smuggling_are_refused(provider, cloud_grant, service, path):
    provider.reset_counters()

    status, headers, _ = raw_get(service.broker_url, f"/api/v1/proxy/{path}", service.headers)

    assert status == 400 and headers["Broker-Error"] == "invalid_path"
    assert seen(provider) == {}


def test_redirects_come_back_and_are_not_followed(provider, cloud_grant, service):
    provider.reset_counters()
    response = service.call(
        "GET", "sandbox", f"{JIRA}/attachment/content/10000", allow_redirects=False
    )
    assert response.status_code == 303
    assert response.headers["Location"].endswith("/_media/10000")
    assert seen(provider) == {f"GET /{JIRA}/attachment/content/10000": 1}


def test_proxy_only_gives_no_raw_token_over_http(provider, apps, cloud_grant, live_server):
    service = Service(live_server.url, proxy_only=True)
    raw = service.http.post(
        f"{live_server.url}/api/v1/access-token",
        json={"user": "alice", "provider": "sandbox"},
        headers={"Authorization": f"Bearer {service.token}"},
        timeout=TIMEOUT,
    )
    assert raw.status_code == 403 and raw.json()["error"] == "proxy_only"
    assert cloud_grant.unseal("access_token") not in raw.text
    assert service.call("GET", "sandbox", f"{JIRA}/myself").status_code == 200


def test_responses_over_the_limit_are_refused_or_cut(provider, cloud_grant, service, settings):
    settings.BROKER_PROXY_MAX_RESPONSE_BYTES = 100_000
    small = service.call("GET", "sandbox", f"{JIRA}/filler?bytes=100000")
    assert small.status_code == 200 and len(small.content) == 100_000

    declared = service.call("GET", "sandbox", f"{JIRA}/filler?bytes=100001")
    assert declared.status_code == 502
    assert declared.headers["Broker-Error"] == "response_too_large"

    streamed = service.call("GET", "sandbox", f"{JIRA}/filler?bytes=300000&chunked=1")
    assert streamed.status_code == 200 and len(streamed.content) <= 100_000
    [cut] = [
        e
        for e in audit_events(action="proxy.called")
        if e.detail["bytes"] < 300_000 and not e.detail["complete"]
    ]
    assert cut.detail["status"] == 200


def test_every_proxied_call_is_audited_without_the_query(provider, cloud_grant, service):
    response = service.call("GET", "sandbox", f"{JIRA}/myself?expand=groups&token=s3cr3t")
    assert response.status_code == 200
    [event] = audit_events(action="proxy.called")
    assert (event.service, event.subject_user, event.provider) == (
        service.client.client_id,
        "alice",
        "sandbox",
    )
    assert event.detail["path"] == f"/{JIRA}/myself" and event.detail["method"] == "GET"
    assert event.detail["status"] == 200 and event.detail["duration_ms"] >= 0
    assert "s3cr3t" not in str(event.detail)


def test_calls_reuse_kept_alive_connections(provider, cloud_grant, service):
    pool = outbound_http._kept_alive_pool().connection_from_url(provider.url)
    opened = pool.num_connections
    for _ in range(3):
        assert service.call("GET", "sandbox", f"{JIRA}/myself").status_code == 200
    assert pool.num_connections - opened <= 1


def test_an_api_token_grant_is_sent_as_basic_auth(provider, apps, owner, service):
    made = provider.api_token("alice", days=200)
    form = ApiTokenForm(
        data={
            "email": made["email"],
            "api_token": made["api_token"],
            "expires_on": made["expires_on"],
        }
    )
    assert form.is_valid(), form.errors
    app = ProviderApp.objects.get(slug="sandbox-api-token")
    grant, _ = store_api_token(owner, app, form, actor_type="admin", actor="test", request=None)
    AccessRule.objects.create(service=service.client, provider_app=app)
    provider.reset_counters()

    myself = service.call("GET", "sandbox-api-token", "rest/api/3/myself")

    assert myself.status_code == 200, myself.text
    assert myself.json()["accountId"] == "sandbox-alice"
    assert made["api_token"] not in myself.text
    assert provider.counters()["api_token_basic"] == 1
    assert seen(provider) == {"GET /rest/api/3/myself": 1}
    Grant.objects.filter(pk=grant.pk).update(status=Grant.Status.RECONNECT_REQUIRED)
    refused = service.call("GET", "sandbox-api-token", "rest/api/3/myself")
    assert (refused.status_code, refused.headers["Broker-Error"]) == (409, "reconnect_required")
    assert provider.counters()["api_token_basic"] == 1
