"""Audit answers: "every use of Alice's grants" is one filter of the audit list, and the
list names services (their client id below the name)."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse

from broker.admin.roles import AUDITOR_GROUP
from broker.audit import trail
from broker.models import AccessRule
from tests.api.conftest import fetch_token
from tests.factories import consented_grant, make_app, service_and_secret

pytestmark = pytest.mark.django_db
JIRA = "https://jira.acme.example/rest/api/2/myself"


@pytest.fixture
def auditor(django_user_model):
    user = django_user_model.objects.create_user("audrey", is_staff=True)
    user.groups.add(Group.objects.get(name=AUDITOR_GROUP))
    return user


def test_an_auditor_filters_by_alice_and_sees_every_service_that_used_her_grants(
    owner, outsider, auditor
):
    cloud = make_app("cloud")
    dc = make_app(
        "jira-acme",
        kind="jira-dc-oauth1",
        base_url="https://jira.acme.example",
        endpoints={},
        secret="consumer-secret",
        signature_method="HMAC-SHA1",
    )
    alices_cloud = consented_grant(owner, cloud)
    consented_grant(owner, dc, access_expires_at=None)
    consented_grant(outsider, cloud)
    reporter, reporter_secret = service_and_secret("reporter")
    signer, signer_secret = service_and_secret("signer")
    AccessRule.objects.create(service=reporter, provider_app=cloud)
    AccessRule.objects.create(service=signer, provider_app=dc, can_sign=True)
    api = Client()
    for user in ("alice", "mallory"):  # by name, as most services ask
        token = fetch_token(api, reporter, reporter_secret)["access_token"]
        response = api.post(
            "/api/v1/access-token",
            {"user": user, "provider": "cloud"},
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {token}",
        )
        assert response.status_code == 200, response.content
    token = fetch_token(api, signer, signer_secret)["access_token"]
    response = api.post(
        "/api/v1/sign",
        {"user": "alice", "provider": "jira-acme", "method": "GET", "url": JIRA},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )
    assert response.status_code == 200, response.content
    # An event about her grant that does not name her (an admin's "refresh now").
    trail.record("grant.refresh_requested", actor_type="admin", grant_id=alices_cloud.pk)
    trail.flush_buffer()

    client = Client()
    client.force_login(auditor)
    url = reverse("admin:broker_auditevent_changelist")
    response = client.get(url, {"user": "alice"})
    assert response.status_code == 200
    shown = list(response.context["cl"].result_list)
    actions = {(e.action, e.service) for e in shown}
    assert ("token.issued", reporter.client_id) in actions
    assert ("request.signed", signer.client_id) in actions
    assert any(e.action == "grant.refresh_requested" for e in shown)
    assert all(e.subject_user in ("alice", "") for e in shown)
    assert not any(e.subject_user == "mallory" for e in shown)
    html = response.content.decode()
    for service in (reporter, signer):
        assert service.name in html and f'title="client id {service.client_id}"' in html
