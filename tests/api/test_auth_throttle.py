"""Failed authentication is throttled per source address and per claimed client id, before
the credentials are checked: 429 + Retry-After, a bounded audit, no lasting lockout."""

from __future__ import annotations

import time

import pytest

from broker.api import ratelimit
from tests.api.conftest import audit_events, basic, post_form

pytestmark = pytest.mark.django_db

ATTACKER = "203.0.113.9"
SERVICE_HOST = "198.51.100.7"


def token_request(api, client_id: str, secret: str, address: str):
    return post_form(
        api,
        {"grant_type": "client_credentials"},
        HTTP_AUTHORIZATION=basic(client_id, secret),
        REMOTE_ADDR=address,
    )


class ThrottleClock:
    """The throttle's clock, held still so that no test straddles a window boundary."""

    def __init__(self) -> None:
        self.now = time.time()

    def time(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def clock(monkeypatch) -> ThrottleClock:
    held = ThrottleClock()
    monkeypatch.setattr(ratelimit, "time", held)
    return held


@pytest.fixture
def window_passed(clock):
    """Moves the throttle's clock past the current one-minute window."""

    def advance() -> None:
        clock.now += ratelimit.WINDOW + 1

    return advance


def test_wrong_secrets_from_one_address_are_throttled_and_the_client_still_gets_in(
    api, service_with_secret, settings, window_passed
):
    settings.BROKER_AUTH_FAILURES_PER_ADDRESS = 5
    settings.BROKER_AUTH_FAILURES_PER_CLIENT = 50
    service, secret = service_with_secret
    statuses = [
        token_request(api, service.client_id, "wrong", ATTACKER).status_code for _ in range(30)
    ]
    assert statuses == [401] * 5 + [429] * 25
    refused = token_request(api, service.client_id, "wrong", ATTACKER)
    assert refused.json()["error"] == "rate_limited"
    assert 1 <= int(refused["Retry-After"]) <= ratelimit.WINDOW + 1
    # Only the failures within the limit are audited, not the flood.
    assert len(audit_events(action="service.auth_failed")) == 5
    # The real service, from its own host, is not locked out.
    assert token_request(api, service.client_id, secret, SERVICE_HOST).status_code == 200
    # From the attacking address even the right secret waits for the window to end...
    assert token_request(api, service.client_id, secret, ATTACKER).status_code == 429
    assert not audit_events(action="service.authenticated", client_ip=ATTACKER)
    # ...and no longer.
    window_passed()
    assert token_request(api, service.client_id, secret, ATTACKER).status_code == 200


def test_wrong_secrets_for_one_client_from_many_addresses_are_throttled_for_a_window(
    api, service_with_secret, settings, window_passed
):
    settings.BROKER_AUTH_FAILURES_PER_ADDRESS = 100
    settings.BROKER_AUTH_FAILURES_PER_CLIENT = 5
    service, secret = service_with_secret
    statuses = [
        token_request(api, service.client_id, "wrong", f"203.0.113.{n}").status_code
        for n in range(1, 11)
    ]
    assert statuses == [401] * 5 + [429] * 5
    assert len(audit_events(action="service.auth_failed")) == 5
    assert token_request(api, service.client_id, secret, SERVICE_HOST).status_code == 429
    window_passed()
    assert token_request(api, service.client_id, secret, SERVICE_HOST).status_code == 200


def test_unknown_clients_and_malformed_requests_count_per_address(api, settings):
    settings.BROKER_AUTH_FAILURES_PER_ADDRESS = 3
    attempts = [
        post_form(api, {"grant_type": "client_credentials"}, REMOTE_ADDR=ATTACKER),  # no auth
        token_request(api, "nobody-1", "x", ATTACKER),
        post_form(api, {"grant_type": "password"}, REMOTE_ADDR=ATTACKER),
        token_request(api, "nobody-2", "x", ATTACKER),
        post_form(api, {"grant_type": "password"}, REMOTE_ADDR=ATTACKER),
    ]
    assert [r.status_code for r in attempts] == [401, 401, 400, 429, 429]
    assert len(audit_events(action="service.auth_failed")) == 3


def test_invalid_bearer_tokens_are_throttled_but_a_valid_token_still_works(
    api, rule, bearer, settings
):
    settings.BROKER_AUTH_FAILURES_PER_ADDRESS = 5
    valid = bearer()
    statuses = [
        api.get(
            "/api/v1/ping", HTTP_AUTHORIZATION=f"Bearer bkt_forged{n}.x", REMOTE_ADDR=ATTACKER
        ).status_code
        for n in range(12)
    ]
    assert statuses == [401] * 5 + [429] * 7
    assert len(audit_events(action="service.auth_failed")) == 5
    assert api.get("/api/v1/ping", REMOTE_ADDR=ATTACKER, **valid).status_code == 200


def test_a_zero_limit_turns_the_throttle_off(api, service_with_secret, settings):
    settings.BROKER_AUTH_FAILURES_PER_ADDRESS = 0
    settings.BROKER_AUTH_FAILURES_PER_CLIENT = 0
    service, _ = service_with_secret
    statuses = {
        token_request(api, service.client_id, "wrong", ATTACKER).status_code for _ in range(30)
    }
    assert statuses == {401}


def test_while_redis_is_unreachable_the_token_endpoint_answers_json_503_and_issues_nothing(
    api, service_with_secret, settings
):
    service, secret = service_with_secret
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    response = token_request(api, service.client_id, secret, SERVICE_HOST)
    assert response.status_code == 503
    assert response["Retry-After"] == "2"
    assert response.json()["error"] == "temporarily_unavailable"
    assert "access_token" not in response.json()
