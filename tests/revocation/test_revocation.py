"""revoke_grant: local wipe at once, RFC 7009 call upstream after the commit."""

from __future__ import annotations

import base64
from urllib.parse import parse_qs

import pytest

from broker.models import AuditEvent, Grant
from broker.revocation.revoke import revoke_grant, revoke_upstream
from tests.factories import make_app, save_grant


def assert_wiped(grant: Grant) -> None:
    grant.refresh_from_db()
    assert grant.status == Grant.Status.REVOKED
    assert grant.revoked_at is not None
    assert grant.next_refresh_at is None
    for field in Grant.SEALED_FIELDS:
        assert not grant.has_secret(field)
        assert grant.unseal(field) is None


@pytest.mark.django_db(transaction=True)
def test_it_wipes_the_grant_and_calls_the_revocation_endpoint(owner, local_server, eager_celery):
    app = make_app(revoke_url=f"{local_server.url}/oauth/revoke", client_id="cid", secret="csecret")
    grant = save_grant(owner, app, refresh="refresh-known-1")

    assert revoke_grant(grant.pk, actor_type="admin", actor="root", reason="offboarding") is True

    assert_wiped(grant)
    assert grant.revoked_reason == "offboarding"
    assert len(local_server.requests) == 1
    sent = local_server.requests[0]
    assert sent.path == "/oauth/revoke"
    assert parse_qs(sent.body.decode()) == {
        "token": ["refresh-known-1"],
        "token_type_hint": ["refresh_token"],
    }
    assert sent.headers["authorization"] == "Basic " + base64.b64encode(b"cid:csecret").decode()
    actions = list(AuditEvent.objects.filter(grant_id=grant.pk).values_list("action", flat=True))
    assert sorted(actions) == ["grant.revoked", "grant.upstream_revoked"]


@pytest.mark.django_db(transaction=True)
def test_it_revokes_once_when_called_twice(owner, local_server, eager_celery):
    app = make_app(revoke_url=f"{local_server.url}/revoke")
    grant = save_grant(owner, app)
    assert revoke_grant(grant.pk, actor_type="admin", actor="a", reason="x") is True
    assert revoke_grant(grant.pk, actor_type="admin", actor="a", reason="again") is False
    assert len(local_server.requests) == 1
    grant.refresh_from_db()
    assert grant.revoked_reason == "x"
    assert AuditEvent.objects.filter(action="grant.revoked").count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_user_disconnect_is_audited_as_disconnected(owner, eager_celery):
    grant = save_grant(owner, make_app())
    assert revoke_grant(grant.pk, actor_type="user", actor="alice", reason="user disconnected")
    assert_wiped(grant)
    event = AuditEvent.objects.get(grant_id=grant.pk)
    assert (event.action, event.detail["upstream"]) == ("grant.disconnected", "not_supported")


@pytest.mark.django_db(transaction=True)
def test_upstream_5xx_is_retried_then_succeeds(owner, local_server, eager_celery):
    local_server.statuses = [503, 502]
    grant = save_grant(owner, make_app(revoke_url=f"{local_server.url}/revoke"))
    revoke_grant(grant.pk, actor_type="admin", actor="a", reason="x")
    assert len(local_server.requests) == 3
    assert AuditEvent.objects.filter(action="grant.upstream_revoked").count() == 1


@pytest.mark.django_db(transaction=True)
def test_upstream_refusal_is_recorded_and_the_grant_stays_revoked(
    owner, local_server, eager_celery
):
    local_server.statuses = [400]
    grant = save_grant(owner, make_app(revoke_url=f"{local_server.url}/revoke"))
    assert revoke_grant(grant.pk, actor_type="admin", actor="a", reason="x")
    assert len(local_server.requests) == 1  # a 4xx is never retried
    failure = AuditEvent.objects.get(action="grant.upstream_revoke_failed")
    assert failure.outcome == "failure" and failure.detail["error"] == "HTTP 400"
    assert_wiped(grant)


@pytest.mark.django_db(transaction=True)
def test_a_4xx_after_a_5xx_ends_the_retries(owner, local_server, eager_celery):
    local_server.statuses = [503, 401, 503]
    grant = save_grant(owner, make_app(revoke_url=f"{local_server.url}/revoke"))
    assert revoke_grant(grant.pk, actor_type="admin", actor="a", reason="x")
    assert len(local_server.requests) == 2
    failure = AuditEvent.objects.get(action="grant.upstream_revoke_failed")
    assert failure.detail["error"] == "HTTP 401"
    assert not AuditEvent.objects.filter(action="grant.upstream_revoked").exists()


@pytest.mark.django_db(transaction=True)
def test_unreachable_provider_gives_up_after_bounded_retries(owner, eager_celery, celery_retries):
    grant = save_grant(owner, make_app(revoke_url="http://127.0.0.1:9/revoke"))
    assert revoke_grant(grant.pk, actor_type="admin", actor="a", reason="x")
    waits = [wait for name, wait in celery_retries if name == revoke_upstream.name]
    assert len(waits) == revoke_upstream.max_retries
    for n, wait in enumerate(waits):  # Celery's backoff with full jitter, capped
        assert (
            0
            <= wait
            <= min(revoke_upstream.retry_backoff_max, revoke_upstream.retry_backoff * 2**n)
        )
    failure = AuditEvent.objects.get(action="grant.upstream_revoke_failed")
    attempts = revoke_upstream.max_retries + 1
    assert failure.detail["error"].startswith(f"gave up after {attempts} attempts: ")
    assert_wiped(grant)


@pytest.mark.django_db(transaction=True)
def test_the_task_message_carries_no_plaintext_token(owner, local_server, monkeypatch):
    from broker.revocation import revoke

    sent = []
    monkeypatch.setattr(revoke.revoke_upstream, "delay", lambda *a: sent.append(a))
    grant = save_grant(
        owner, make_app(revoke_url=f"{local_server.url}/r"), refresh="refresh-plain-9"
    )
    revoke_grant(grant.pk, actor_type="admin", actor="a", reason="x")
    assert len(sent) == 1
    assert "refresh-plain-9" not in repr(sent)
    # The sealed token is bound to this grant's revocation and nothing else.
    from broker.crypto.sealed_fields import keyring

    assert keyring().decrypt(sent[0][1], f"revocation:{grant.pk}") == "refresh-plain-9"
    with pytest.raises(Exception):
        keyring().decrypt(sent[0][1], f"broker_grant:{grant.pk}:refresh_token")


@pytest.mark.django_db
def test_nothing_is_enqueued_when_the_transaction_rolls_back(owner, local_server, monkeypatch):
    from django.db import transaction

    from broker.revocation import revoke

    sent = []
    monkeypatch.setattr(revoke.revoke_upstream, "delay", lambda *a: sent.append(a))
    grant = save_grant(owner, make_app(revoke_url=f"{local_server.url}/r"))

    class Abort(Exception):
        pass

    with pytest.raises(Abort), transaction.atomic():
        revoke_grant(grant.pk, actor_type="admin", actor="a", reason="x")
        raise Abort
    grant.refresh_from_db()
    assert grant.status == Grant.Status.ACTIVE and grant.has_secret("access_token")
    assert sent == []
