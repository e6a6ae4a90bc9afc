"""The client address behind reverse proxies (broker.infra.client_address): audit rows, the
failed-authentication throttle and the metrics allow-list all see the same one."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from django.test import RequestFactory, override_settings

from broker.api import ratelimit
from broker.infra.client_address import client_ip
from broker.models import AuditEvent

PROXY = "10.0.0.2"


def request_from(remote_addr: str, forwarded: str | None = None):
    headers = {"HTTP_X_FORWARDED_FOR": forwarded} if forwarded is not None else {}
    return RequestFactory().get("/", REMOTE_ADDR=remote_addr, **headers)


@pytest.mark.parametrize(
    ("hops", "forwarded", "expected"),
    [
        # No trusted proxy: the header is the caller's to write, never read.
        (0, "198.51.100.1", PROXY),
        # One proxy: the last entry is what it saw; the ones left of it are the caller's.
        (1, "6.6.6.6, 198.51.100.1", "198.51.100.1"),
        (1, "198.51.100.1", "198.51.100.1"),
        # Two proxies: the outer one wrote the second entry from the right.
        (2, "6.6.6.6, 198.51.100.1, 10.0.0.3", "198.51.100.1"),
        (2, "2001:db8::1 , 10.0.0.3", "2001:db8::1"),
        # Fewer entries than proxies (sent past them) or garbage: the peer address.
        (2, "198.51.100.1", PROXY),
        (1, "", PROXY),
        (1, "6.6.6.6, not-an-address", PROXY),
    ],
)
def test_the_client_is_the_address_the_outermost_trusted_proxy_saw(hops, forwarded, expected):
    with override_settings(BROKER_TRUSTED_PROXIES=hops):
        assert client_ip(request_from(PROXY, forwarded)) == expected


def ping_with_forged_token(client, hops: int, forwarded: str, **headers):
    with override_settings(BROKER_TRUSTED_PROXIES=hops):
        return client.get(
            "/api/v1/ping",
            HTTP_AUTHORIZATION="Bearer bkt_forged.x",
            REMOTE_ADDR=PROXY,
            HTTP_X_FORWARDED_FOR=forwarded,
            **headers,
        )


@pytest.mark.django_db
def test_audit_rows_record_the_forwarded_address_only_behind_trusted_proxies(client):
    ping_with_forged_token(client, 1, "6.6.6.6, 198.51.100.1")
    ping_with_forged_token(client, 0, "6.6.6.6, 198.51.100.1")
    addresses = AuditEvent.objects.filter(action="service.auth_failed").order_by("at", "id")
    assert list(addresses.values_list("client_ip", flat=True)) == ["198.51.100.1", PROXY]


@pytest.mark.django_db
def test_the_throttle_counts_each_forwarded_address_apart(client, settings, monkeypatch):
    """Behind a proxy every caller shares REMOTE_ADDR: one attacker must not throttle all."""
    now = time.time()  # held still: the test must not straddle the throttle's window
    monkeypatch.setattr(ratelimit, "time", SimpleNamespace(time=lambda: now))
    settings.BROKER_AUTH_FAILURES_PER_ADDRESS = 3
    attacker = [ping_with_forged_token(client, 1, "198.51.100.66").status_code for _ in range(5)]
    assert attacker == [401, 401, 401, 429, 429]
    assert ping_with_forged_token(client, 1, "198.51.100.7").status_code == 401


@pytest.mark.django_db
@override_settings(
    BROKER_METRICS_TOKEN="",
    BROKER_METRICS_ALLOWED_NETWORKS=["10.9.0.0/16"],
    BROKER_TRUSTED_PROXIES=1,
)
def test_the_metrics_allow_list_checks_the_forwarded_address(client):
    # Through the proxy, from outside the allowed network: refused though the proxy is inside.
    assert (
        client.get(
            "/metrics", REMOTE_ADDR="10.9.0.1", HTTP_X_FORWARDED_FOR="203.0.113.5"
        ).status_code
        == 403
    )
    assert (
        client.get("/metrics", REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR="10.9.3.4").status_code
        == 200
    )
