"""`sandbox/manage.py sandbox_id_token` (docs/sso.md, "Trying token exchange"): the ID token
it prints is one the sandbox IdP issued, and a service registered for its client exchanges it
at the live broker for the user's provider token, as the docs tell a developer to."""

from __future__ import annotations

import subprocess
import sys
from typing import Any
from urllib.parse import urlparse

import pytest
import requests

from accounts.models import User
from broker.models import AccessRule, AuditEvent
from tests.factories import service_and_secret
from tests.sandbox_grants import TIMEOUT, connect_grant
from tests.sandbox_server import MANAGE, PROJECT_ROOT, sandbox_env
from tests.test_sso_sandbox import sso_sign_in

pytestmark = [pytest.mark.sandbox, pytest.mark.django_db(transaction=True)]

# A service's own sign-in at the sandbox IdP (never the broker's `broker-sso`).
SERVICE_SIGN_IN = "id-token-test-service"


def sandbox_manage(sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    """`sandbox/manage.py ARGS` with the running sandbox's environment (its database, key
    and public URL), as a developer runs it beside `make dev`."""
    env = sandbox_env(sandbox.sso_env_file.parent, urlparse(sandbox.url).port, 2)
    return subprocess.run(
        [sys.executable, str(MANAGE), *args],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def service_sign_in(sandbox_sso) -> str:
    """A client of the sandbox IdP standing for a service's own sign-in."""
    registered = sandbox_manage(
        sandbox_sso,
        "shell",
        "-c",
        "from oauth2_provider.models import Application as A; "
        f"A.objects.update_or_create(client_id={SERVICE_SIGN_IN!r}, defaults=dict("
        "name='a service', client_type=A.CLIENT_PUBLIC, "
        "authorization_grant_type=A.GRANT_AUTHORIZATION_CODE, "
        "redirect_uris='http://127.0.0.1:8002/cb', algorithm=A.RS256_ALGORITHM))",
    )
    assert registered.returncode == 0, registered.stderr
    return SERVICE_SIGN_IN


def on_behalf_service(name: str, audience: str, app) -> tuple[Any, str]:
    """A service registered for `audience`, allowed `app` on behalf of its users."""
    service, secret = service_and_secret(name)
    service.subject_audiences = [audience]
    service.save()
    AccessRule.objects.create(service=service, provider_app=app, on_behalf_of=True)
    return service, secret


def exchange(live_server, service, secret: str, id_token: str) -> requests.Response:
    """Token exchange (RFC 8693) of `id_token` for the user's sandbox token, over HTTP."""
    return requests.post(
        f"{live_server.url}/api/v1/oauth/token",
        data={
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token": id_token,
            "subject_token_type": "urn:ietf:params:oauth:token-type:id_token",
            "audience": "sandbox",
        },
        auth=(service.client_id, secret),
        timeout=TIMEOUT,
    )


def test_the_printed_id_token_is_exchanged_for_the_users_provider_token(
    sandbox_sso, sandbox_apps, live_server, service_sign_in
):
    with sso_sign_in(live_server, sandbox_sso, "alice"):  # links her IdP identity
        alice = User.objects.get(username="alice")
    connect_grant(sandbox_sso, alice)
    service, secret = on_behalf_service("assistant", service_sign_in, sandbox_apps["sandbox"])

    printed = sandbox_manage(
        sandbox_sso, "sandbox_id_token", "alice", "--client-id", SERVICE_SIGN_IN
    )
    assert printed.returncode == 0, printed.stderr
    id_token = printed.stdout.strip()
    assert id_token.count(".") == 2

    response = exchange(live_server, service, secret, id_token)
    assert response.status_code == 200, response.text
    me = requests.get(
        f"{sandbox_sso.url}/me",
        headers={"Authorization": f"Bearer {response.json()['access_token']}"},
        timeout=TIMEOUT,
    )
    assert me.status_code == 200 and me.json()["account_id"], me.text


def test_a_token_for_another_client_is_refused_by_the_service(
    sandbox_sso, sandbox_apps, live_server, service_sign_in
):
    """The command does not widen anything: the token carries the client it names, and a
    service registered for another audience gets nothing for it."""
    service, secret = on_behalf_service("elsewhere", "some-other-client", sandbox_apps["sandbox"])
    printed = sandbox_manage(
        sandbox_sso, "sandbox_id_token", "alice", "--client-id", SERVICE_SIGN_IN
    )
    assert printed.returncode == 0, printed.stderr
    response = exchange(live_server, service, secret, printed.stdout.strip())
    assert response.status_code == 400 and "access_token" not in response.json()
    assert not AuditEvent.objects.filter(service=service.client_id, outcome="success").exists()


def test_an_unknown_client_or_user_prints_no_token(sandbox_sso):
    unknown_client = sandbox_manage(sandbox_sso, "sandbox_id_token", "alice", "--client-id", "nope")
    assert unknown_client.returncode != 0 and unknown_client.stdout == ""
    assert "no client 'nope'" in unknown_client.stderr and "broker-sso" in unknown_client.stderr
    unknown_user = sandbox_manage(
        sandbox_sso, "sandbox_id_token", "mallory", "--client-id", "broker-sso"
    )
    assert unknown_user.returncode != 0 and unknown_user.stdout == ""
    assert "no active sandbox user 'mallory'" in unknown_user.stderr
