"""The client package's auth objects against the sandbox over real HTTP: a provider 401 ->
one forced refresh -> one retry (requests and httpx), and OAuth 1.0a signing through
/api/v1/sign."""

from __future__ import annotations

import asyncio
import io
from urllib.parse import urlsplit

import httpx
import pytest
import requests
from broker_client import Forbidden, ReconnectRequired
from requests.adapters import HTTPAdapter

from tests.client.conftest import count, expire_at_provider, sandbox_app
from tests.sandbox_grants import identity_works, refresh_count

pytestmark = pytest.mark.sandbox
TIMEOUT = 10


class RecordingAdapter(HTTPAdapter):
    """requests' own transport, noting each request it really sends (retries included)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, str, int]] = []

    def send(self, request, *args, **kwargs):
        response = super().send(request, *args, **kwargs)
        self.sent.append((request.method, urlsplit(request.url).path, response.status_code))
        return response


@pytest.fixture
def provider_session(broker, grant):
    """A session calling the sandbox with alice's token, and the record of what it sent."""
    session = requests.Session()
    adapter = RecordingAdapter()
    session.mount("http://", adapter)
    session.auth = broker.requests_auth(user="alice", provider="sandbox")
    yield session, adapter.sent
    session.close()


def stale_token(broker, sandbox) -> str:
    """alice's token as the client cached it, ended at the sandbox behind the broker's back."""
    token = broker.access_token(user="alice", provider="sandbox").access_token
    expire_at_provider(sandbox, token)
    sandbox.reset_counters()
    return token


# --- requests ------------------------------------------------------------------------------


def test_requests_auth_retries_a_401_once_with_a_refreshed_token(provider_session, broker, sandbox):
    session, sent = provider_session
    assert session.get(f"{sandbox.url}/me", timeout=TIMEOUT).status_code == 200
    stale_token(broker, sandbox)
    sent.clear()

    response = session.get(f"{sandbox.url}/me", timeout=TIMEOUT)

    assert response.status_code == 200 and response.json()["nickname"] == "alice"
    assert sent == [("GET", "/me", 401), ("GET", "/me", 200)]
    assert [earlier.status_code for earlier in response.history] == [401]
    assert refresh_count(sandbox) == 1
    # The refreshed token is cached: the next call is one request, no refresh.
    sent.clear()
    assert session.get(f"{sandbox.url}/me", timeout=TIMEOUT).status_code == 200
    assert sent == [("GET", "/me", 200)] and refresh_count(sandbox) == 1


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param({"json": {"summary": "Hello"}}, {"json": {"summary": "Hello"}}, id="json"),
        pytest.param(
            {
                "data": io.BytesIO(b"summary=Hello"),
                "headers": {"Content-Type": "application/x-www-form-urlencoded"},
            },
            {"form": {"summary": "Hello"}},
            id="file",
        ),
    ],
)
def test_the_retry_sends_the_body_again(provider_session, broker, sandbox, body, expected):
    session, sent = provider_session
    stale_token(broker, sandbox)

    response = session.post(f"{sandbox.url}/rest/api/2/echo", timeout=TIMEOUT, **body)

    assert response.status_code == 200, response.text
    assert response.json() == {**response.json(), **expected, "method": "POST"}
    assert [status for _, _, status in sent] == [401, 200]
    assert refresh_count(sandbox) == 1


def test_a_streamed_body_is_not_retried(provider_session, broker, sandbox):
    session, sent = provider_session
    stale_token(broker, sandbox)
    response = session.post(
        f"{sandbox.url}/rest/api/2/echo", data=iter([b"summary=Hello"]), timeout=TIMEOUT
    )
    assert response.status_code == 401
    assert len(sent) == 1 and refresh_count(sandbox) == 0


def test_it_retries_only_once(broker, grant, sandbox, local_server):
    """An API that refuses every token: two requests, one refresh, and the 401 returned."""
    local_server.statuses = [401, 401, 401]
    auth = broker.requests_auth(user="alice", provider="sandbox")
    first = broker.access_token(user="alice", provider="sandbox").access_token
    sandbox.reset_counters()

    response = requests.post(f"{local_server.url}/api", data=b"x=1", auth=auth, timeout=TIMEOUT)

    assert response.status_code == 401
    sent = [(r.headers["authorization"], r.body) for r in local_server.requests]
    assert len(sent) == 2 and refresh_count(sandbox) == 1
    assert sent[0] == (f"Bearer {first}", b"x=1")
    retried = sent[1][0].removeprefix("Bearer ")
    assert retried != first and identity_works(sandbox, retried) and sent[1][1] == b"x=1"


def test_a_burst_of_401s_for_one_token_costs_one_refresh(provider_session, broker, sandbox):
    session, sent = provider_session
    broker.access_token(user="alice", provider="sandbox")
    # Both requests carry the token before it is revoked, as in-flight calls of two threads.
    prepared = [
        session.prepare_request(requests.Request("GET", f"{sandbox.url}/me")) for _ in range(2)
    ]
    stale_token(broker, sandbox)

    statuses = [session.send(request, timeout=TIMEOUT).status_code for request in prepared]

    assert statuses == [200, 200]
    assert [status for _, _, status in sent] == [401, 200, 401, 200]
    assert refresh_count(sandbox) == 1


def test_a_grant_dead_at_the_provider_raises_reconnect_required(provider_session, sandbox):
    session, sent = provider_session
    assert session.get(f"{sandbox.url}/me", timeout=TIMEOUT).status_code == 200
    sandbox.revoke_user("alice")  # the refresh token too
    sent.clear()
    with pytest.raises(ReconnectRequired):
        session.get(f"{sandbox.url}/me", timeout=TIMEOUT)
    assert sent == [("GET", "/me", 401)]


# --- httpx ---------------------------------------------------------------------------------


def test_httpx_auth_retries_a_401_once_with_a_refreshed_token(broker, grant, sandbox):
    sent: list[tuple[str, str, int]] = []

    def note(response: httpx.Response) -> None:
        sent.append((response.request.method, response.request.url.path, response.status_code))

    auth = broker.httpx_auth(user="alice", provider="sandbox")
    with httpx.Client(auth=auth, event_hooks={"response": [note]}, timeout=TIMEOUT) as client:
        stale_token(broker, sandbox)
        response = client.post(f"{sandbox.url}/rest/api/2/echo", json={"summary": "Hello"})
        again = client.get(f"{sandbox.url}/me")

    assert response.status_code == 200 and response.json()["json"] == {"summary": "Hello"}
    assert again.status_code == 200
    assert sent == [
        ("POST", "/rest/api/2/echo", 401),
        ("POST", "/rest/api/2/echo", 200),
        ("GET", "/me", 200),
    ]
    assert refresh_count(sandbox) == 1


def test_httpx_auth_works_in_an_async_client(broker, grant, sandbox):
    sent: list[int] = []

    async def note(response: httpx.Response) -> None:
        sent.append(response.status_code)

    async def call() -> httpx.Response:
        auth = broker.httpx_auth(user="alice", provider="sandbox")
        async with httpx.AsyncClient(auth=auth, event_hooks={"response": [note]}) as client:
            return await client.get(f"{sandbox.url}/me", timeout=TIMEOUT)

    stale_token(broker, sandbox)
    response = asyncio.run(call())

    assert response.status_code == 200 and response.json()["nickname"] == "alice"
    assert sent == [401, 200] and refresh_count(sandbox) == 1


def test_httpx_auth_retries_only_once(broker, grant, sandbox, local_server):
    local_server.statuses = [401, 401, 401]
    auth = broker.httpx_auth(user="alice", provider="sandbox")
    broker.access_token(user="alice", provider="sandbox")
    sandbox.reset_counters()

    response = httpx.post(f"{local_server.url}/api", content=b"x=1", auth=auth, timeout=TIMEOUT)

    assert response.status_code == 401
    assert [r.body for r in local_server.requests] == [b"x=1", b"x=1"]
    assert refresh_count(sandbox) == 1


# --- OAuth 1.0a: signatures through /api/v1/sign -----------------------------------------


def test_requests_oauth1_auth_signs_each_request(broker, service, jira_grant, sandbox):
    base = sandbox_app(sandbox, "sandbox-jira")["base_url"]
    session = requests.Session()
    session.auth = broker.requests_oauth1_auth(user="alice", provider="sandbox-jira")

    myself = session.get(f"{base}/rest/api/2/myself", timeout=TIMEOUT)
    query = session.get(f"{base}/rest/api/2/echo", params={"jql": "project = ACME"}, timeout=10)
    form = session.post(
        f"{base}/rest/api/2/echo",
        data={"summary": "Hello world"},
        headers={"X-Atlassian-Token": "no-check"},
        timeout=TIMEOUT,
    )
    session.close()

    assert myself.status_code == 200 and myself.json()["name"] == "alice"
    assert query.status_code == 200 and query.json()["query"] == {"jql": "project = ACME"}
    assert form.status_code == 200 and form.json()["form"] == {"summary": "Hello world"}
    assert count("request.signed", service["client_id"]) == 3


def test_a_signature_is_good_for_exactly_one_request(broker, service, jira_grant, sandbox):
    base = sandbox_app(sandbox, "sandbox-jira")["base_url"]
    url = f"{base}/rest/api/2/myself"

    def get(target: str, header: str) -> requests.Response:
        return requests.get(target, headers={"Authorization": header}, timeout=TIMEOUT)

    elsewhere = get(f"{base}/rest/api/2/echo", broker.sign("GET", url, grant=str(jira_grant.pk)))
    header = broker.sign("GET", url, grant=str(jira_grant.pk))
    exact = get(url, header)
    replayed = get(url, header)

    assert header.startswith("OAuth ")
    assert elsewhere.status_code == 401
    assert exact.status_code == 200 and exact.json()["name"] == "alice"
    assert replayed.status_code == 401


def test_signing_without_a_rule_that_allows_it_is_forbidden(broker, service, grant, sandbox):
    with pytest.raises(Forbidden) as refused:
        broker.sign("GET", f"{sandbox.url}/me", user="alice", provider="sandbox")
    assert refused.value.error == "access_denied" and refused.value.status == 403
    assert count("request.signed", service["client_id"]) == 0
