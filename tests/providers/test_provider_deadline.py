"""Every call to a provider ends within BROKER_PROVIDER_TIMEOUT in total, however slowly the
provider answers, so the refresh lock (which must outlast that deadline) never expires
while a refresh is at the provider.

The provider here is a local server that answers one byte every half second: requests'
own timeouts (per read) would never fire, and it would take a minute to finish."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
import requests
from authlib.integrations.requests_client import OAuth1Auth
from django.db import connection

from broker.consent import oauth1_flow
from broker.infra.outbound_http import DeadlineExceeded, provider_session
from broker.models import Grant
from broker.providers import account, oauth2_client
from broker.refresh import on_demand, timing
from broker.revocation import revoke
from tests.factories import make_app, save_grant
from tests.local_http import (
    TricklingServer,
    self_signed_certificate,
    serve_tls,
    start_trickling_server,
)

DEADLINE = 1.5
INTERVAL = 0.5  # one byte per half second: no single read ever waits for DEADLINE
SLACK = 1.0  # thread scheduling on a busy machine


@pytest.fixture
def trickling() -> Iterator[Callable[..., TricklingServer]]:
    servers: list[TricklingServer] = []

    def start(phase: str = "headers") -> TricklingServer:
        servers.append(start_trickling_server(INTERVAL, phase=phase))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def timed(call: Callable[[], object], expected: type[Exception]) -> tuple[float, Exception]:
    started = time.monotonic()
    with pytest.raises(expected) as raised:
        call()
    return time.monotonic() - started, raised.value


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
@pytest.mark.parametrize("phase", ["headers", "body"])
def test_a_trickled_answer_is_cut_off_at_the_deadline(trickling, tmp_path, phase, tls):
    server = trickling(phase)
    url = f"{server.url}/token"
    verify: bool | str = True
    if tls:
        certificate = self_signed_certificate(tmp_path, "127.0.0.1")
        serve_tls(server.server, certificate)
        url, verify = url.replace("http://", "https://"), certificate[0]

    def call() -> None:
        with provider_session(seconds=DEADLINE) as session:
            session.post(url, data={"grant_type": "refresh_token"}, verify=verify)

    elapsed, error = timed(call, DeadlineExceeded)
    assert isinstance(error, requests.Timeout)
    assert DEADLINE - 0.1 <= elapsed <= DEADLINE + SLACK
    assert len(server.requests) == 1


def test_an_answer_within_the_deadline_is_read_whole():
    server = start_trickling_server(0.001, phase="body")
    try:
        with provider_session(seconds=DEADLINE) as session:
            response = session.get(f"{server.url}/me")
    finally:
        server.stop()
    assert response.json()["access_token"] == "trickled-access"


def get_within(url: str, seconds: float | None = None) -> object:
    with provider_session(seconds=seconds) as session:
        return session.get(url)


def test_a_shorter_deadline_set_after_a_longer_one_still_cuts_off_first(trickling):
    server = trickling("body")
    longer: dict[str, float] = {}

    def long_call() -> None:
        longer["elapsed"], _ = timed(
            lambda: get_within(f"{server.url}/me", 3 * DEADLINE),
            DeadlineExceeded,
        )

    first = threading.Thread(target=long_call)
    first.start()
    time.sleep(0.2)  # the long call's deadline is queued first
    elapsed, _ = timed(
        lambda: get_within(f"{server.url}/me", DEADLINE),
        DeadlineExceeded,
    )
    first.join()
    assert DEADLINE - 0.1 <= elapsed <= DEADLINE + SLACK
    assert 3 * DEADLINE - 0.1 <= longer["elapsed"] <= 3 * DEADLINE + SLACK


def test_provider_calls_start_no_thread_each(monkeypatch):
    server = start_trickling_server(0.001, phase="body")
    get_within(f"{server.url}/me")  # the watchdog, once per process
    caller = threading.current_thread()
    started = []
    original = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        if threading.current_thread() is caller:  # not the local server's own
            started.append(thread.name)
        original(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    try:
        for _ in range(3):
            get_within(f"{server.url}/me")
    finally:
        server.stop()
    assert started == []


def provider_calls(url: str) -> dict[str, tuple[Callable[[], object], type[Exception]]]:
    """Every kind of call the broker makes to a provider, aimed at `url`, and the
    transient error each caller turns a timeout into."""
    app = make_app(
        "slow",
        revoke_url=f"{url}/revoke",
        endpoints={"token": f"{url}/token", "identity": f"{url}/me"},
    )
    oauth1_auth = OAuth1Auth("consumer", client_secret="s", signature_method="HMAC-SHA1")
    return {
        "code_exchange": (
            lambda: oauth2_client.exchange_code(app, code="c", redirect_uri="https://b/cb"),
            oauth2_client.TransientTokenError,
        ),
        "refresh": (
            lambda: oauth2_client.refresh(app, refresh_token="r", redirect_uri="https://b/cb"),
            oauth2_client.TransientTokenError,
        ),
        "identity": (
            lambda: account.look_up_account(app, "access"),
            account.AccountLookupError,
        ),
        "revocation": (
            lambda: revoke.call_revocation_endpoint(app, "r", "refresh_token"),
            revoke.UpstreamRetryable,
        ),
        "oauth1_request_token": (
            lambda: oauth1_flow.provider_request(
                "POST", f"{url}/request-token", oauth1_auth, step="request_token"
            ),
            oauth1_flow.ProviderError,
        ),
    }


@pytest.mark.django_db
@pytest.mark.parametrize(
    "name", ["code_exchange", "refresh", "identity", "revocation", "oauth1_request_token"]
)
def test_every_provider_call_fails_transiently_within_the_deadline(trickling, settings, name):
    settings.BROKER_PROVIDER_TIMEOUT = DEADLINE
    server = trickling()
    call, transient = provider_calls(server.url)[name]
    elapsed, error = timed(call, transient)
    assert DEADLINE - 0.1 <= elapsed <= DEADLINE + SLACK
    assert getattr(error, "transient", True)  # identity look-ups say so explicitly
    assert "timeout" in str(error) or "Timeout" in str(error) or "Deadline" in str(error)
    assert len(server.requests) == 1


@pytest.mark.django_db(transaction=True)
def test_a_second_refresher_never_sends_the_same_refresh_token_upstream_twice(
    trickling, settings, owner
):
    """The refresh lock lives just longer than the deadline: the first refresh is cut off
    before the lock expires, and the caller that waited for it shares its failure instead
    of sending the same (rotating) refresh token again."""
    settings.BROKER_PROVIDER_TIMEOUT = DEADLINE
    settings.BROKER_REFRESH_LOCK_TIMEOUT = DEADLINE + 1
    assert timing.check_timing() == []
    server = trickling("body")
    app = make_app("slow", endpoints={"token": f"{server.url}/token"})
    grant = save_grant(owner, app, refresh="the-one-refresh-token")
    outcomes: dict[str, object] = {}

    def refresher(name: str) -> None:
        started = time.monotonic()
        try:
            on_demand.ensure_fresh(grant.pk, min_ttl=60, force_refresh=True)
            outcomes[name] = "token"
        except Exception as exc:
            outcomes[name] = type(exc)
        finally:
            outcomes[f"{name} seconds"] = time.monotonic() - started
            connection.close()

    first = threading.Thread(target=refresher, args=("first",))
    second = threading.Thread(target=refresher, args=("second",))
    first.start()
    time.sleep(0.3)  # the first holds the lock and is at the provider
    second.start()
    first.join(timeout=30)
    second.join(timeout=30)

    assert outcomes["first"] is on_demand.ProviderUnavailable
    assert outcomes["second"] is on_demand.ProviderUnavailable
    assert outcomes["first seconds"] <= DEADLINE + SLACK
    sent = [r.body for r in server.requests]
    assert len(sent) == 1 and b"the-one-refresh-token" in sent[0]
    stored = Grant.objects.get(pk=grant.pk)
    assert stored.failure_count == 1 and stored.last_error.startswith("timeout")
    assert stored.unseal("refresh_token") == "the-one-refresh-token"


def test_a_lock_that_does_not_outlast_the_provider_deadline_is_a_startup_error(settings):
    settings.BROKER_PROVIDER_TIMEOUT = 10
    settings.BROKER_REFRESH_LOCK_TIMEOUT = 10
    assert [e.id for e in timing.check_timing()] == ["broker.E103"]
