"""The recommended front server (deploy/nginx.conf, run as it is on loopback by
tests/front_server.py) in front of gunicorn with gunicorn.conf.py: slow clients no longer
hold the web process, and the broker still sees each client's own address."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from benchmarks import slow_clients
from broker.models import AuditEvent
from tests import front_server, processes
from tests.gunicorn_server import gunicorn
from tests.local_http import self_signed_certificate
from tests.sandbox_server import free_port


def test_the_shipped_configuration_is_accepted_by_nginx(tmp_path):
    """As shipped (TLS on 443, the redirect on 80), only its files moved: the loopback runs
    below leave the TLS lines out."""
    certificate, key = self_signed_certificate(tmp_path, "broker.example")
    conf = tmp_path / "nginx.conf"
    conf.write_text(front_server.relocated_config(tmp_path, Path(certificate), Path(key)))

    front_server.check(conf, tmp_path)  # raises with nginx's complaint


def test_while_gunicorn_is_down_it_answers_503_with_retry_after_never_a_bare_502(tmp_path):
    port, nothing_there = free_port(), free_port()
    nginx = front_server.start(port, f"127.0.0.1:{nothing_there}", tmp_path / "nginx")
    try:
        url = f"http://127.0.0.1:{port}"
        processes.wait_until(lambda: processes.listening("127.0.0.1", port), 30, "nginx")
        api = requests.post(f"{url}/api/v1/access-token", json={}, timeout=10)
        mcp = requests.post(f"{url}/mcp", json={}, timeout=10)
        page = requests.get(f"{url}/connections/", timeout=10)
    finally:
        processes.stop(nginx)

    for answer in (api, mcp):
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "5"
        assert answer.json()["error"] == "temporarily_unavailable"
    assert page.status_code == 503 and page.headers["Retry-After"] == "5"
    assert page.headers["Content-Type"] == "text/html"
    assert "restarting" in page.text


@pytest.mark.slow
def test_healthz_is_answered_while_600_slow_clients_trickle_their_headers(tmp_path):
    # Straight to gunicorn, 560 such connections left /healthz unanswered for 20 s.
    slow_clients.raise_file_limit()
    with slow_clients.web_behind_front_server(tmp_path) as (_, front_port):
        phase = slow_clients.measure("through nginx", front_port, connections=600, seconds=8)

    print(phase.summary())
    assert phase.slow_opened >= 600 and phase.slow_refused == 0  # the load was there
    assert phase.probes_sent >= 70
    assert phase.answered == phase.probes_sent
    assert phase.percentile_ms(0.99) < 1000


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_broker_sees_the_address_the_front_server_received_the_request_from(tmp_path):
    port = free_port()
    with gunicorn(tmp_path / "gunicorn.log", BROKER_TRUSTED_PROXIES="1") as web_url:
        nginx = front_server.start(port, web_url.removeprefix("http://"), tmp_path / "nginx")
        try:
            url = f"http://127.0.0.1:{port}"
            processes.wait_until(
                lambda: processes.answers(f"{url}/healthz"), 30, "nginx", process=nginx
            )
            refused = requests.post(
                f"{url}/api/v1/oauth/token",
                data={"grant_type": "client_credentials"},
                auth=("no-such-client", "wrong"),
                # A caller's own entries prove nothing: nginx appends the address it saw.
                headers={"X-Forwarded-For": "203.0.113.9"},
                timeout=10,
            )
        finally:
            processes.stop(nginx)

    assert refused.status_code == 401
    failure = AuditEvent.objects.get(action="service.auth_failed")
    assert failure.client_ip == "127.0.0.1"
