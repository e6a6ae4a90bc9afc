"""Audit answers: "every use of Alice's grants" is one filter of the audit list (fetches,
signatures and proxied calls by name, on-behalf-of requests, events about her grants), and
the list names services (their client id below the name). The events come from the real
API: a token fetch, a signature, a proxied call to a local upstream, a token exchange
with a token from a local IdP."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse

from accounts.models import AUDITOR_GROUP, ExternalIdentity
from broker.audit import trail
from broker.models import AccessRule
from tests.api.conftest import basic, fetch_token
from tests.factories import consented_grant, make_app, service_and_secret
from tests.subject_idp import AUDIENCE

pytestmark = pytest.mark.django_db
JIRA = "https://jira.acme.example/rest/api/2/myself"
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"


@pytest.fixture
def auditor(django_user_model):
    user = django_user_model.objects.create_user("audrey", is_staff=True)
    user.groups.add(Group.objects.get(name=AUDITOR_GROUP))
    return user


def service_with_rule(name: str, app, **rule):
    service, secret = service_and_secret(name)
    AccessRule.objects.create(service=service, provider_app=app, **rule)
    return service, secret


def bearer(api: Client, service, secret) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {fetch_token(api, service, secret)['access_token']}"}


def test_an_auditor_filters_by_alice_and_sees_every_service_that_used_her_grants(
    owner, outsider, auditor, local_server, idp
):
    local_server.documents["/api/v4/user"] = b'{"username": "alice"}'
    cloud = make_app("cloud", endpoints={"api": f"{local_server.url}/api"})
    dc = make_app(
        "jira-acme",
        kind="jira-dc-oauth1",
        base_url="https://jira.acme.example",
        secret="consumer-secret",
        signature_method="HMAC-SHA1",
    )
    alices_cloud = consented_grant(owner, cloud)
    consented_grant(owner, dc, access_expires_at=None)
    consented_grant(outsider, cloud)
    ExternalIdentity.objects.create(user=owner, issuer=idp.issuer, subject="alice-sub")
    reporter = service_with_rule("reporter", cloud)
    signer = service_with_rule("signer", dc, can_sign=True)
    gateway = service_with_rule("gateway", cloud)
    assistant = service_with_rule("assistant", cloud, on_behalf_of=True)
    assistant[0].subject_audiences = [AUDIENCE]
    assistant[0].save()
    api = Client()

    for user in ("alice", "mallory"):  # by name, as most services ask
        response = api.post(
            "/api/v1/access-token",
            {"user": user, "provider": "cloud"},
            content_type="application/json",
            **bearer(api, *reporter),
        )
        assert response.status_code == 200, response.content
    response = api.post(
        "/api/v1/sign",
        {"user": "alice", "provider": "jira-acme", "method": "GET", "url": JIRA},
        content_type="application/json",
        **bearer(api, *signer),
    )
    assert response.status_code == 200, response.content
    response = api.get(
        "/api/v1/proxy/cloud/v4/user", HTTP_BROKER_USER="alice", **bearer(api, *gateway)
    )
    assert response.status_code == 200
    assert b"alice" in b"".join(response.streaming_content)  # audited once the body is sent
    response = api.post(
        "/api/v1/oauth/token",
        urlencode(
            {
                "grant_type": EXCHANGE,
                "subject_token": idp.token("alice-sub"),
                "subject_token_type": ID_TOKEN,
                "audience": "cloud",
            }
        ),
        content_type="application/x-www-form-urlencoded",
        HTTP_AUTHORIZATION=basic(assistant[0].client_id, assistant[1]),
    )
    assert response.status_code == 200, response.content
    # An event about her grant that does not name her (an admin's "refresh now").
    trail.record("grant.refresh_requested", actor_type="admin", grant_id=alices_cloud.pk)

    client = Client()
    client.force_login(auditor)
    response = client.get(reverse("admin:broker_auditevent_changelist"), {"user": "alice"})
    assert response.status_code == 200
    shown = list(response.context["cl"].result_list)
    used = {(e.service, e.action) for e in shown if e.service}
    client_ids = {
        name: service.client_id
        for name, (service, _) in {
            "reporter": reporter,
            "signer": signer,
            "gateway": gateway,
            "assistant": assistant,
        }.items()
    }
    assert (client_ids["reporter"], "token.issued") in used
    assert (client_ids["signer"], "request.signed") in used
    assert (client_ids["assistant"], "token.exchanged") in used
    assert (client_ids["gateway"], "proxy.called") in used
    assert any(e.action == "grant.refresh_requested" for e in shown)
    assert {e.subject_user for e in shown} <= {"alice", ""}
    html = response.content.decode()
    for service, _ in (reporter, signer, gateway, assistant):
        assert f'title="client id {service.client_id}">{service.name}<' in html
    # Mallory's fetch is there, under her name only.
    response = client.get(reverse("admin:broker_auditevent_changelist"), {"user": "mallory"})
    assert [e.action for e in response.context["cl"].result_list] == ["token.issued"]
