"""No token, secret, code, verifier or credentialed URL reaches the log output."""

from __future__ import annotations

import base64
import io
import json
import logging
import logging.config

import pytest
from django.conf import settings

from broker.ops.logging_config import logging_settings, redact
from broker.refresh.tasks import enqueue_due_refreshes
from broker.revocation.revoke import revoke_grant
from broker.service_identity.service_secrets import new_secret
from tests.factories import make_app, make_service, save_grant

SECRETS = {
    "access": "AT-secret-log-1111",
    "refresh": "RT-secret-log-2222",
    "code": "CODE-secret-log-3333",
    "bearer": "BEARER-secret-log-4444",
    "client_secret": "CS-secret-log-5555",
    "verifier": "VERIFIER-secret-log-6666",
    "webhook": "bkw_WEBHOOK-secret-log-7777",
    "password": "PW-secret-log-8888",
    "userinfo": "URLPW-secret-log-9999",
}


@pytest.fixture
def log_output():
    """The project's logging configuration at DEBUG, JSON, written to a buffer."""
    logging.config.dictConfig(logging_settings("DEBUG", "json"))
    buffer = io.StringIO()
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(buffer)
    yield buffer
    logging.config.dictConfig(settings.LOGGING)


@pytest.mark.django_db(transaction=True)
def test_no_secret_appears_in_any_log_line(owner, local_server, eager_celery, client, log_output):
    app = make_app(revoke_url=f"{local_server.url}/revoke", secret=SECRETS["client_secret"])
    make_service(
        "reports",
        webhook_url=f"{local_server.url}/hook",
        webhook_secret=SECRETS["webhook"],
        app=app,
    )
    grant = save_grant(owner, app, access=SECRETS["access"], refresh=SECRETS["refresh"])
    local_server.statuses = [503]  # one retry, so retry paths log too

    revoke_grant(grant.pk, actor_type="admin", actor="root", reason="x")
    client.force_login(owner)
    client.get(
        f"/connections/?code={SECRETS['code']}&state=s1",
        HTTP_AUTHORIZATION=f"Bearer {SECRETS['bearer']}",
    )
    client.get(
        f"/oauth/callback/nowhere?code={SECRETS['code']}&code_verifier={SECRETS['verifier']}"
    )
    # What careless code or a library might log: the net must catch all of it.
    log = logging.getLogger("broker.careless")
    log.info("token response %s", {"access_token": SECRETS["access"], "token_type": "Bearer"})
    log.info('body {"refresh_token": "%s"}', SECRETS["refresh"])
    log.info(
        "POST form client_secret=%s&code_verifier=%s", SECRETS["client_secret"], SECRETS["verifier"]
    )
    log.info("headers {'Authorization': 'Bearer %s'}", SECRETS["bearer"])
    log.info("Authorization: Basic %s", SECRETS["password"] + "dXNlcjpwYXNz")
    log.info('OAuth oauth_token="%s", oauth_verifier="%s"', SECRETS["access"], SECRETS["verifier"])
    log.info("login password=%s", SECRETS["password"])
    log.info("webhook secret %s issued", SECRETS["webhook"])
    try:
        raise ValueError(
            f"fetch failed: https://u:{SECRETS['userinfo']}@h.example/cb?code={SECRETS['code']}"
        )
    except ValueError:
        log.exception("provider call failed")

    output = log_output.getvalue()
    for name, value in SECRETS.items():
        assert value not in output, name
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    requests = [line for line in lines if line["logger"] == "broker.request"]
    assert {"method": "GET", "path": "/connections/", "status": 200}.items() <= requests[0].items()
    assert requests[0]["user"] == owner.pk
    tasks = [line for line in lines if line["logger"] == "broker.task"]
    assert {t["task"] for t in tasks} >= {
        "broker.revocation.revoke_upstream",
        "broker.notifications.deliver_webhook",
    }
    assert any("[REDACTED]" in line["message"] for line in lines)
    assert any("exception" in line and "provider call failed" in line["message"] for line in lines)


def test_redaction_keeps_what_is_not_secret():
    assert redact("GET /connections/ 200 3ms") == "GET /connections/ 200 3ms"
    assert redact("status_code=500 kind=atlassian") == "status_code=500 kind=atlassian"
    assert redact("state=abc") == "state=[REDACTED]"  # binds a consent in progress
    assert redact("https://a.example/x?code=1") == "https://a.example/x?[REDACTED]"
    assert redact("https://u:p@a.example/x") == "https://a.example/x"


def test_redaction_covers_oauth1_secrets_colon_pairs_and_percent_encoded_pairs():
    hidden = "HIDDEN-value-1234"
    lines = [
        f"token_secret={hidden}",
        f"consumer_secret={hidden}&x=1",
        f"request_token_secret={hidden}",
        f"refresh_token: {hidden}",
        f"Client_Secret : '{hidden} with spaces'",
        f'code_verifier: "{hidden} with spaces"',
        f"next=/oauth%3Frefresh_token%3D{hidden}%26state%3D{hidden}",
        f"refresh_token%3d{hidden}",
        f"GET /token?grant_type=refresh_token&refresh_token={hidden}&client_id=c",
        f"POST /t body grant_type=authorization_code&code={hidden}&code_verifier={hidden}",
        f"https://app.example/cb#access_token={hidden}&state={hidden}",
    ]
    for line in lines:
        assert hidden not in redact(line), line
    assert redact("status_code: 500, grant_type=refresh_token") == (
        "status_code: 500, grant_type=refresh_token"
    )


@pytest.mark.django_db
def test_request_lines_name_the_calling_service(client, log_output):
    service = make_service("svc-named")
    secret = new_secret(service)
    basic = base64.b64encode(f"svc-named:{secret}".encode()).decode()
    issued = client.post(
        "/api/v1/oauth/token",
        "grant_type=client_credentials",
        content_type="application/x-www-form-urlencoded",
        HTTP_AUTHORIZATION=f"Basic {basic}",
    )
    assert issued.status_code == 200, issued.content
    bearer = f"Bearer {issued.json()['access_token']}"
    assert client.get("/api/v1/grants", HTTP_AUTHORIZATION=bearer).status_code == 200
    assert client.get("/api/v1/grants", HTTP_AUTHORIZATION="Bearer bkt_forged").status_code == 401

    lines = [json.loads(line) for line in log_output.getvalue().splitlines()]
    requests = [line for line in lines if line["logger"] == "broker.request"]
    assert [(r["path"], r["status"], r["service"]) for r in requests] == [
        ("/api/v1/oauth/token", 200, "svc-named"),
        ("/api/v1/grants", 200, "svc-named"),
        ("/api/v1/grants", 401, None),  # an unproven caller is named nowhere
    ]
    assert requests[1]["message"].endswith(" service=svc-named")


@pytest.mark.django_db
def test_idle_housekeeping_tasks_log_nothing_at_info(eager_celery, log_output):
    enqueue_due_refreshes.delay()

    lines = [json.loads(line) for line in log_output.getvalue().splitlines()]
    tasks = [(t["task"], t["level"]) for t in lines if t["logger"] == "broker.task"]
    assert tasks == [("broker.tasks.enqueue_due_refreshes", "DEBUG")]


def test_celery_and_runserver_repeat_no_request_or_task_line(log_output):
    """Each request and task is logged once, by broker.request / broker.task; the lines
    Celery and runserver print about the same events are below the configured level."""
    logging.config.dictConfig(logging_settings("INFO", "json"))
    for handler in logging.getLogger().handlers:
        handler.setStream(log_output)  # type: ignore[attr-defined]
    logging.getLogger("django.server").warning('"GET /connections/ HTTP/1.1" 404 179')
    logging.getLogger("celery.beat").info("Scheduler: Sending due task purge-expired-consent")
    logging.getLogger("celery.worker.strategy").info("Task broker.tasks.refresh_grant received")
    logging.getLogger("celery.app.trace").info("Task broker.tasks.refresh_grant succeeded")
    logging.getLogger("celery.app.trace").error("Task broker.tasks.refresh_grant raised")
    messages = [json.loads(line)["message"] for line in log_output.getvalue().splitlines()]
    assert messages == ["Task broker.tasks.refresh_grant raised"]
