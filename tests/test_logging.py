"""No token, secret, code, verifier or credentialed URL reaches the log output."""

from __future__ import annotations

import io
import json
import logging
import logging.config

import pytest
from django.conf import settings

from broker.logging_config import logging_settings, redact
from broker.revocation import revoke_grant
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
