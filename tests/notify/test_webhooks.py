"""Webhook notifications: signed, retried, delivered only to public (or allow-listed) hosts."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from django.contrib.auth.models import Group
from django.core import mail
from django.test import override_settings

from broker.infra import outbound_http
from broker.models import AccessRule, WebhookAttempt, WebhookDelivery
from broker.notify import dispatch
from broker.revocation.revoke import revoke_grant
from tests.factories import make_app, make_service, save_grant

SECRET = "bkw_test-webhook-secret-abc"


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The receiver's recipe from docs/webhooks.md."""
    timestamp = headers["x-broker-timestamp"]
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return hmac.compare_digest("sha256=" + expected.hexdigest(), headers["x-broker-signature"])


@pytest.fixture
def no_connections(monkeypatch):
    """Records every outbound connection attempt made below the guard (there must be none)."""
    import urllib3.util.connection

    attempts = []
    real = urllib3.util.connection.create_connection

    def spy(address, *args, **kwargs):
        attempts.append(address)
        return real(address, *args, **kwargs)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", spy)
    monkeypatch.setattr("urllib3.connection.connection.create_connection", spy)
    return attempts


@pytest.mark.django_db(transaction=True)
def test_a_revocation_is_delivered_signed_to_subscribed_services(owner, local_server, eager_celery):
    app = make_app()
    make_service("reports", webhook_url=f"{local_server.url}/hook", webhook_secret=SECRET, app=app)
    make_service(
        "other-app",
        webhook_url=f"{local_server.url}/other",
        webhook_secret=SECRET,
        app=make_app("elsewhere"),
    )
    grant = save_grant(owner, app)

    revoke_grant(grant.pk, actor_type="admin", actor="root", reason="incident 42")

    assert [r.path for r in local_server.requests] == ["/hook"]
    received = local_server.requests[0]
    assert verify(SECRET, received.headers, received.body)
    assert not verify("bkw_wrong", received.headers, received.body)
    payload = json.loads(received.body)
    assert payload["event"] == "grant.revoked"
    assert payload["grant"]["id"] == str(grant.pk) and payload["grant"]["status"] == "revoked"
    assert payload["data"] == {"reason": "incident 42", "by": "admin"}
    assert received.headers["x-broker-event"] == "grant.revoked"
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "delivered" and delivery.attempt_count == 1
    assert "access-" not in received.body.decode()  # no token in any event


@pytest.mark.django_db(transaction=True)
def test_a_receiver_error_is_retried_until_it_succeeds(owner, local_server, eager_celery):
    local_server.statuses = [500, 503]
    app = make_app()
    make_service("reports", webhook_url=f"{local_server.url}/hook", webhook_secret=SECRET, app=app)
    grant = save_grant(owner, app)
    revoke_grant(grant.pk, actor_type="admin", actor="root", reason="x")

    assert len(local_server.requests) == 3
    assert all(verify(SECRET, r.headers, r.body) for r in local_server.requests)
    assert len({r.body for r in local_server.requests}) == 1  # the same event each time
    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.attempt_count) == ("delivered", 3)
    assert list(delivery.attempts.values_list("number", "status_code")) == [
        (1, 500),
        (2, 503),
        (3, 200),
    ]


@pytest.mark.django_db(transaction=True)
def test_a_receiver_that_keeps_failing_is_retried_with_backoff_then_marked_failed(
    owner, local_server, eager_celery, celery_retries
):
    attempts = dispatch.deliver_webhook.max_retries + 1
    local_server.statuses = [429, *[503] * attempts]
    app = make_app()
    make_service("reports", webhook_url=f"{local_server.url}/hook", webhook_secret=SECRET, app=app)
    revoke_grant(save_grant(owner, app).pk, actor_type="admin", actor="root", reason="x")

    assert len(local_server.requests) == attempts
    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.attempt_count) == ("failed", attempts)
    assert delivery.last_error == "HTTP 503"  # recorded once Celery gave up
    waits = [wait for name, wait in celery_retries if name == dispatch.deliver_webhook.name]
    assert len(waits) == dispatch.deliver_webhook.max_retries
    # Each wait is drawn below the first one doubled n times (Celery's full jitter), capped.
    for n, wait in enumerate(waits):
        ceiling = min(
            dispatch.deliver_webhook.retry_backoff_max,
            dispatch.deliver_webhook.retry_backoff * 2**n,
        )
        assert 0 <= wait <= ceiling
    # The late ones are far longer than the first could be (odds of failing: below 1e-9).
    assert max(waits[-4:]) > dispatch.deliver_webhook.retry_backoff * 2


@pytest.mark.django_db(transaction=True)
def test_a_4xx_is_not_retried(owner, local_server, eager_celery):
    local_server.statuses = [410]
    app = make_app()
    make_service("reports", webhook_url=f"{local_server.url}/hook", webhook_secret=SECRET, app=app)
    revoke_grant(save_grant(owner, app).pk, actor_type="admin", actor="root", reason="x")
    assert len(local_server.requests) == 1
    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.last_error) == ("failed", "HTTP 410")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:10.0.0.1]/hook",
        "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",  # NAT64 to 169.254.169.254
        "http://[2002:c0a8:105::1]/hook",  # 6to4 from 192.168.1.5
        "http://192.168.1.5:8080/",
        "http://0.0.0.0/",
        "https://user:pass@hooks.example/",
        "file:///etc/passwd",
    ],
)
def test_private_and_link_local_targets_are_refused_without_sending(
    owner, eager_celery, no_connections, url
):
    app = make_app()
    make_service("evil", webhook_url=url, webhook_secret=SECRET, app=app)
    revoke_grant(save_grant(owner, app).pk, actor_type="admin", actor="root", reason="x")
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "failed" and delivery.last_error.startswith("destination refused")
    assert WebhookAttempt.objects.get().status_code is None
    assert no_connections == []


@pytest.mark.django_db(transaction=True)
def test_loopback_is_refused_unless_allow_listed(owner, local_server, eager_celery, no_connections):
    app = make_app()
    make_service("local", webhook_url=f"{local_server.url}/hook", webhook_secret=SECRET, app=app)
    with override_settings(BROKER_WEBHOOK_ALLOWED_NETWORKS=[]):
        revoke_grant(save_grant(owner, app, 1).pk, actor_type="admin", actor="root", reason="x")
    assert local_server.requests == [] and no_connections == []
    assert WebhookDelivery.objects.get().status == "failed"

    revoke_grant(save_grant(owner, app, 2).pk, actor_type="admin", actor="root", reason="x")
    assert len(local_server.requests) == 1
    assert len(no_connections) == 1  # the spy sees real connections


@pytest.mark.parametrize(
    "address",
    [
        "64:ff9b::7f00:1",  # NAT64 (RFC 6052) of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # ... of 169.254.169.254, the cloud metadata service
        "64:ff9b::a00:1",  # ... of 10.0.0.1
        "64:ff9b:1::808:808",  # local-use NAT64 (RFC 8215): never public
        "2002:7f00:1::1",  # 6to4 (RFC 3056) of 127.0.0.1
        "2002:a9fe:a9fe::1",
        "2002:ac10:1::1",  # ... of 172.16.0.1
        "::7f00:1",  # IPv4-compatible 127.0.0.1
        "::a9fe:a9fe",
        "::ffff:0:a00:1",  # IPv4-translated (RFC 2765) 10.0.0.1
        "::ffff:7f00:1",  # IPv4-mapped
        "::ffff:169.254.169.254",
    ],
)
def test_ipv6_addresses_wrapping_a_non_public_ipv4_address_are_refused(address):
    with override_settings(BROKER_WEBHOOK_ALLOWED_NETWORKS=[]):
        with pytest.raises(outbound_http.DestinationRefused):
            outbound_http.check_address(address)


@pytest.mark.parametrize(
    "address", ["64:ff9b::808:808", "2002:808:808::1", "::ffff:8.8.8.8", "2606:4700::1111"]
)
def test_ipv6_addresses_wrapping_a_public_ipv4_address_pass(address):
    with override_settings(BROKER_WEBHOOK_ALLOWED_NETWORKS=[]):
        outbound_http.check_address(address)


def test_the_guard_refuses_names_resolving_to_private_addresses():
    with override_settings(BROKER_WEBHOOK_ALLOWED_NETWORKS=[]):
        with pytest.raises(outbound_http.DestinationRefused):
            outbound_http.resolve_checked("localhost", 80)
        with pytest.raises(outbound_http.DestinationRefused):
            outbound_http.post("http://localhost:1/x", b"{}", {})


def test_the_guard_checks_the_address_it_connects_to(monkeypatch):
    """DNS rebinding: the name passes the first lookup, then resolves to a private address."""
    import socket

    answers = iter(["93.184.216.34", "10.0.0.7"])
    real = socket.getaddrinfo

    def fake(host, port, *args, **kwargs):
        if host == "rebind.example":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    with override_settings(BROKER_WEBHOOK_ALLOWED_NETWORKS=[], BROKER_ALLOW_HTTP=True):
        with pytest.raises(outbound_http.DestinationRefused):
            outbound_http.post("http://rebind.example/hook", b"{}", {})


@pytest.mark.django_db
def test_services_outside_the_users_group_are_not_told(owner, local_server):
    app = make_app()
    service = make_service("reports", webhook_url=f"{local_server.url}/h", webhook_secret=SECRET)
    staff = Group.objects.create(name="staff-only")
    AccessRule.objects.create(service=service, provider_app=app, users_group=staff)
    grant = save_grant(owner, app)
    assert dispatch.subscribers(grant) == []
    owner.groups.add(staff)
    assert dispatch.subscribers(grant) == [service]
    service.enabled = False
    service.save()
    assert dispatch.subscribers(grant) == []


@pytest.mark.django_db(transaction=True)
def test_users_are_emailed_when_an_admin_revokes_or_a_reconnect_is_needed(owner, eager_celery):
    app = make_app()
    revoke_grant(save_grant(owner, app, 1).pk, actor_type="user", actor="alice", reason="mine")
    assert mail.outbox == []
    revoke_grant(save_grant(owner, app, 2).pk, actor_type="admin", actor="root", reason="x")
    assert [m.to for m in mail.outbox] == [["alice@example.com"]]
    assert "revoked" in mail.outbox[0].subject
    grant = save_grant(owner, app, 3)
    dispatch.notify("grant.reconnect_required", grant)
    assert len(mail.outbox) == 2 and "Reconnect" in mail.outbox[1].subject
    assert all("access-" not in m.body and "refresh-" not in m.body for m in mail.outbox)


@pytest.mark.django_db
def test_unknown_events_are_rejected(owner):
    with pytest.raises(ValueError):
        dispatch.notify("grant.exploded", save_grant(owner, make_app()))
