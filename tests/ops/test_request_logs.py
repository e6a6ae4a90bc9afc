"""One log line per request, with its request id and the client's address; the request id
returned to the caller, written on the request's audit events and sent on its upstream
calls; a failing /readyz logged once per change, not once per probe."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import re
from pathlib import Path

import pytest
from django.conf import settings
from django.test import override_settings

from broker.models import AuditEvent
from broker.ops import health
from broker.ops.logging_config import logging_settings
from tests.celery_worker import start_worker, stop_worker
from tests.factories import make_app, save_grant
from tests.processes import wait_until

CLOSED_REDIS = "redis://127.0.0.1:1/0"
NEW_ID = re.compile(r"[0-9a-f]{32}")


@pytest.fixture
def log_lines():
    """The project's logging configuration (INFO, JSON) into a buffer; returns a function
    that gives the lines written so far, parsed."""
    logging.config.dictConfig(logging_settings("INFO", "json"))
    buffer = io.StringIO()
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(buffer)

    def lines() -> list[dict]:
        return [json.loads(line) for line in buffer.getvalue().splitlines()]

    yield lines
    logging.config.dictConfig(settings.LOGGING)


@pytest.mark.django_db
def test_a_4xx_is_logged_once_with_its_request_id_and_the_client_address(client, log_lines):
    page = client.get("/no-such-page/", REMOTE_ADDR="203.0.113.7", HTTP_X_REQUEST_ID="front-1")
    api = client.get(
        "/api/v1/grants", REMOTE_ADDR="203.0.113.8", HTTP_AUTHORIZATION="Bearer bkt_forged"
    )

    assert (page.status_code, page["X-Request-ID"]) == (404, "front-1")
    assert api.status_code == 401 and NEW_ID.fullmatch(api["X-Request-ID"])
    lines = log_lines()
    assert [(line["logger"], line["level"]) for line in lines] == [
        ("broker.request", "INFO"),
        ("broker.request", "INFO"),
    ]
    assert [
        (line["path"], line["status"], line["request_id"], line["client"]) for line in lines
    ] == [
        ("/no-such-page/", 404, "front-1", "203.0.113.7"),
        ("/api/v1/grants", 401, api["X-Request-ID"], "203.0.113.8"),
    ]
    assert "client=203.0.113.7 request_id=front-1" in lines[0]["message"]


@pytest.mark.parametrize(
    "sent", ["", "has space", "x" * 129, "line\nforged", "-leading-dash", "q=1", "é"]
)
@pytest.mark.django_db
def test_a_request_id_that_is_not_sane_is_replaced_by_a_new_one(client, log_lines, sent):
    response = client.get("/healthz", HTTP_X_REQUEST_ID=sent)

    assert NEW_ID.fullmatch(response["X-Request-ID"])
    (line,) = log_lines()
    assert line["request_id"] == response["X-Request-ID"]
    assert sent not in line["message"] or sent == ""


@pytest.mark.django_db
def test_a_failing_readyz_logs_one_error_until_it_is_ready_again(client, log_lines, monkeypatch):
    monkeypatch.setattr(health, "_last_failures", None)
    with override_settings(REDIS_URL=CLOSED_REDIS):
        assert [client.get("/readyz").status_code for _ in range(5)] == [503] * 5
    assert [client.get("/readyz").status_code for _ in range(3)] == [200] * 3

    lines = log_lines()
    assert [line["level"] for line in lines if line["level"] != "INFO"] == ["ERROR"]
    changes = [line for line in lines if line["logger"] == "broker.ops.health"]
    assert [(line["level"], line["state"]) for line in changes] == [
        ("ERROR", "unready"),
        ("INFO", "ready"),
    ]
    assert "redis error" in changes[0]["message"]
    assert len([line for line in lines if line["logger"] == "broker.request"]) == 8


@pytest.mark.django_db(transaction=True)
def test_the_request_id_reaches_the_audit_event_and_the_upstream_call(
    owner, client, local_server, eager_celery, log_lines
):
    grant = save_grant(owner, make_app(revoke_url=f"{local_server.url}/oauth/revoke"))
    client.force_login(owner)

    response = client.post(f"/connections/{grant.pk}/disconnect", HTTP_X_REQUEST_ID="front-77")

    assert response.status_code == 302 and response["X-Request-ID"] == "front-77"
    [revocation] = local_server.requests
    assert revocation.path == "/oauth/revoke"
    assert revocation.headers["x-request-id"] == "front-77"
    events = AuditEvent.objects.filter(grant_id=grant.pk)
    assert {e.action for e in events} >= {"grant.disconnected", "grant.upstream_revoked"}
    assert {e.detail.get("request_id") for e in events} == {"front-77"}
    task_lines = [line for line in log_lines() if line["logger"] == "broker.task"]
    assert task_lines and {line["request_id"] for line in task_lines} == {"front-77"}


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_worker_sends_upstream_the_id_of_the_request_that_enqueued_the_task(
    owner, client, local_server, tmp_path: Path
):
    log_file = tmp_path / "worker.log"
    worker = start_worker(log_file, LOG_FORMAT="json")
    try:
        grant = save_grant(owner, make_app(revoke_url=f"{local_server.url}/oauth/revoke"))
        client.force_login(owner)

        client.post(f"/connections/{grant.pk}/disconnect", HTTP_X_REQUEST_ID="front-78")

        wait_until(
            lambda: AuditEvent.objects.filter(action="grant.upstream_revoked").exists(),
            40,
            "the upstream revocation",
            process=worker,
            log_file=log_file,
        )
    finally:
        stop_worker(worker)
    [revocation] = local_server.requests
    assert revocation.headers["x-request-id"] == "front-78"
    upstream = AuditEvent.objects.get(action="grant.upstream_revoked")
    assert upstream.detail["request_id"] == "front-78"
    lines = [json.loads(line) for line in log_file.read_text().splitlines() if '"logger"' in line]
    task_lines = [line for line in lines if line.get("task") == "broker.revocation.revoke_upstream"]
    assert task_lines and all(line["request_id"] == "front-78" for line in task_lines)
