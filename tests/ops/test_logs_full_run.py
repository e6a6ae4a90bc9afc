"""A full run (consent for each protocol, refresh, service authentication, token fetch,
signing, disconnect) logged at DEBUG: no token, secret, code or verifier in the output."""

from __future__ import annotations

import base64

import pytest
from django.test import Client

from broker.models import AccessRule, Grant, PendingAuthorization, ProviderApp, ServiceClient
from broker.refresh.on_demand import ensure_fresh
from broker.revocation.revoke import revoke_grant
from broker.service_identity.service_secrets import new_secret
from tests.consent_driver import (
    callback_url,
    press_connect,
    query_of,
    sandbox_consent,
    sign_in_to_sandbox,
    visit,
)
from tests.ops.test_logging import log_output  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.sandbox, pytest.mark.django_db(transaction=True)]


def tokens_of(grant: Grant) -> list[str]:
    grant.refresh_from_db()
    return [value for field in Grant.SEALED_FIELDS if (value := grant.unseal(field))]


def test_a_full_run_logs_no_secret(
    sandbox_apps,
    sandbox,
    owner,
    broker_login,
    live_server,
    eager_celery,
    log_output,  # noqa: F811
):
    secrets: list[str] = []
    for app in sandbox_apps.values():
        secrets += [v for f in ProviderApp.SEALED_FIELDS if (v := app.unseal(f))]
    alice = broker_login("alice", "alice-broker")

    # OAuth 2.0 consent: JSON token encoding (sandbox) and query-string encoding (Data Center).
    for slug in ("sandbox", "sandbox-dc"):
        sign_in_to_sandbox(alice, sandbox.url, "alice")
        url = callback_url(alice, live_server.url, slug)
        secrets += [query_of(url)["code"], query_of(url)["state"]]
        assert visit(alice, url).status_code == 302
        grant = Grant.objects.get(provider_app__slug=slug)
        secrets += tokens_of(grant)
        ensure_fresh(grant.pk, min_ttl=0, force_refresh=True)  # a refresh, rotating tokens
        secrets += tokens_of(grant)

    # OAuth 1.0a consent.
    url = sandbox_consent(press_connect(alice, live_server.url, "sandbox-jira"), "alice", "allow")
    secrets += [query_of(url)["oauth_token"], query_of(url)["oauth_verifier"]]
    assert visit(alice, url).status_code == 302
    jira = Grant.objects.get(provider_app__slug="sandbox-jira")
    secrets += tokens_of(jira)

    # A service authenticates, fetches a token and gets a request signed.
    service = ServiceClient.objects.create(client_id="svc-logs", name="Logs")
    service_secret = new_secret(service)
    for slug in ("sandbox", "sandbox-jira"):
        AccessRule.objects.create(
            service=service, provider_app=sandbox_apps[slug], can_sign=slug == "sandbox-jira"
        )
    api = Client()
    basic = base64.b64encode(f"svc-logs:{service_secret}".encode()).decode()
    issued = api.post(
        "/api/v1/oauth/token",
        "grant_type=client_credentials",
        content_type="application/x-www-form-urlencoded",
        HTTP_AUTHORIZATION=f"Basic {basic}",
    )
    assert issued.status_code == 200, issued.content
    broker_token = issued.json()["access_token"]
    bearer = {"HTTP_AUTHORIZATION": f"Bearer {broker_token}"}
    fetched = api.post(
        "/api/v1/access-token",
        {"user": "alice", "provider": "sandbox", "min_ttl": 0},
        content_type="application/json",
        **bearer,
    )
    assert fetched.status_code == 200, fetched.content
    signed = api.post(
        "/api/v1/sign",
        {
            "user": "alice",
            "provider": "sandbox-jira",
            "method": "GET",
            "url": f"{sandbox.url}/rest/api/2/myself?expand=groups",
        },
        content_type="application/json",
        **bearer,
    )
    assert signed.status_code == 200, signed.content
    signature = signed.json()["authorization"].split('oauth_signature="')[1].split('"')[0]
    secrets += [service_secret, broker_token, fetched.json()["access_token"], signature]

    # Disconnect: wiped here, revoked upstream (RFC 7009) in the (eager) task.
    revoke_grant(
        Grant.objects.get(provider_app__slug="sandbox").pk,
        actor_type="user",
        actor="alice",
        reason="done",
    )

    output = log_output.getvalue()
    assert "/api/v1/access-token" in output and "/oauth/callback/sandbox" in output
    leaked = [s for s in set(secrets) if len(s) >= 8 and s in output]
    context = [output[max(0, output.find(s) - 300) : output.find(s) + 60] for s in leaked]
    assert leaked == [], context


def test_the_sandbox_logs_no_secret(sandbox_apps, sandbox, owner, broker_login, live_server):
    """`make dev` merges the sandbox's output with the broker's. Data Center's OAuth 2.0
    token requests carry the code, verifier, client secret and refresh token in the query
    string, which the sandbox's request lines must not show."""
    app = sandbox_apps["sandbox-dc"]
    secrets = [v for f in ProviderApp.SEALED_FIELDS if (v := app.unseal(f))]
    alice = broker_login("alice", "alice-broker")
    sign_in_to_sandbox(alice, sandbox.url, "alice")
    url = callback_url(alice, live_server.url, "sandbox-dc")
    pending = PendingAuthorization.objects.get(state=query_of(url)["state"])
    secrets += [query_of(url)["code"], query_of(url)["state"], pending.unseal("code_verifier")]
    assert visit(alice, url).status_code == 302
    grant = Grant.objects.get(provider_app=app)
    secrets += tokens_of(grant)
    ensure_fresh(grant.pk, min_ttl=0, force_refresh=True)
    secrets += tokens_of(grant)

    log = sandbox.log_file.read_text()
    assert "POST /rest/oauth2/latest/token 200" in log  # the token requests were logged
    leaked = [s for s in set(secrets) if len(s) >= 8 and s in log]
    assert leaked == [], [log[max(0, log.find(s) - 200) : log.find(s) + 60] for s in leaked]
