"""Acting on behalf of a signed-in user: token exchange (RFC 8693) at /api/v1/oauth/token
and on-behalf-of access rules. The user's tokens come from a company IdP the test runs
over real HTTP (tests/subject_idp.py), trusted through BROKER_SUBJECT_ISSUERS."""

from __future__ import annotations

import json
import time
from io import StringIO

import pytest
from django.core.management import call_command
from joserfc.jwk import RSAKey

from accounts.models import ExternalIdentity
from broker.models import AccessRule, Grant, ServiceClient
from tests.api.conftest import audit_events, exchange, fetch_token
from tests.factories import consented_grant, service_and_secret
from tests.subject_idp import AUDIENCE, SubjectIdp

pytestmark = pytest.mark.django_db

MYSELF = "https://jira.acme.example/rest/api/2/myself"


def nothing_served(grant: Grant) -> bool:
    grant.refresh_from_db()
    return grant.last_used_at is None and not audit_events(action="token.exchanged")


def test_a_service_exchanges_the_users_token_for_her_provider_token(
    api, idp, alice, assistant, grant
):
    subject_token = idp.token("alice-sub")
    response = exchange(api, assistant, subject_token)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["access_token"] == grant.unseal("access_token")
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    assert body["token_type"] == "Bearer" and 3500 < body["expires_in"] <= 3600
    assert body["scope"] == "read:jira-work read:me"
    assert response["Cache-Control"] == "no-store"
    [event] = audit_events(action="token.exchanged")
    assert (event.service, event.subject_user, event.provider) == (
        assistant[0].client_id,
        "alice",
        "atlassian",
    )
    assert event.detail["subject_issuer"] == idp.issuer and event.detail["on_behalf_of"]
    assert subject_token not in json.dumps(event.detail)
    # `resource` names the app as well; a user's token is reused for its lifetime.
    again = exchange(
        api, assistant, subject_token, audience="", resource="urn:broker:provider:atlassian"
    )
    assert again.status_code == 200 and again.json()["access_token"] == body["access_token"]
    assert idp.jwks_fetches() == 1  # the keys are cached


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda idp: idp.token("alice-sub", exp=int(time.time()) - 60), id="expired"),
        pytest.param(
            lambda idp: idp.token("alice-sub", nbf=int(time.time()) + 300), id="not-yet-valid"
        ),
        pytest.param(lambda idp: idp.token("alice-sub", aud="another-service"), id="other-aud"),
        pytest.param(lambda idp: idp.unsigned("alice-sub"), id="alg-none"),
        pytest.param(lambda idp: idp.hs256_with_public_key("alice-sub"), id="hs256-public-key"),
        pytest.param(
            lambda idp: idp.token(
                "alice-sub", key=RSAKey.generate_key(2048, parameters={"kid": "key-1"})
            ),
            id="bad-signature",
        ),
        pytest.param(lambda idp: idp.token("nobody-sub"), id="unknown-user"),
        pytest.param(lambda idp: "not-a-jwt", id="garbage"),
    ],
)
def test_a_bad_subject_token_is_invalid_request_audited_and_serves_nothing(
    api, idp, alice, assistant, grant, forge
):
    response = exchange(api, assistant, forge(idp))
    assert response.status_code == 400, response.content
    assert response.json()["error"] == "invalid_request"
    assert "access_token" not in response.json()
    [event] = audit_events(action="token.exchange_denied")
    assert event.service == assistant[0].client_id and event.outcome == "denied"
    assert event.detail["reason"] == "invalid_request"
    assert nothing_served(grant)


def test_a_token_from_an_untrusted_issuer_fetches_nothing_from_it(
    api, idp, alice, assistant, grant
):
    stranger = SubjectIdp()
    try:
        response = exchange(api, assistant, stranger.token("alice-sub"))
        assert response.status_code == 400 and "not trusted" in response.json()["error_description"]
        assert stranger.server.requests == []
        [event] = audit_events(action="token.exchange_denied")
        assert event.detail["subject_issuer"] == stranger.issuer
    finally:
        stranger.stop()
    assert nothing_served(grant)


def test_a_token_for_another_services_audience_is_useless_to_this_one(
    api, idp, alice, assistant, grant, atlassian
):
    other, other_secret = service_and_secret("other")
    other.subject_audiences = ["other-audience"]
    other.save()
    AccessRule.objects.create(service=other, provider_app=atlassian, on_behalf_of=True)
    response = exchange(api, (other, other_secret), idp.token("alice-sub"))
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"
    assert "audience" in response.json()["error_description"]
    assert nothing_served(grant)


def test_a_rolled_key_is_fetched_once_more(api, idp, alice, assistant, grant, key_set_clock):
    assert exchange(api, assistant, idp.token("alice-sub")).status_code == 200
    new_key = RSAKey.generate_key(2048, parameters={"kid": "key-2"})
    idp.publish(idp.key, new_key)
    key_set_clock.pass_refetch_interval()  # within it, an unknown kid fetches nothing
    response = exchange(api, assistant, idp.token("alice-sub", key=new_key))
    assert response.status_code == 200, response.content
    assert idp.jwks_fetches() == 2


def test_an_app_the_service_may_not_use_or_without_a_grant_is_invalid_target(
    api, idp, alice, assistant, grant, other_app, jira_dc
):
    token = idp.token("alice-sub")
    assert exchange(api, assistant, token, audience="gitlab").json()["error"] == "invalid_target"
    AccessRule.objects.create(service=assistant[0], provider_app=other_app, on_behalf_of=True)
    no_grant = exchange(api, assistant, token, audience="gitlab")
    assert no_grant.status_code == 400 and no_grant.json()["error"] == "invalid_target"
    unknown = exchange(api, assistant, token, audience="", resource="https://elsewhere")
    assert unknown.json()["error"] == "invalid_target"
    events = audit_events(action="token.exchange_denied")
    assert [e.detail["reason"] for e in events] == ["invalid_target"] * 3
    assert events[1].subject_user == "alice" and events[1].detail["subject_issuer"] == idp.issuer
    assert nothing_served(grant)


def test_scopes_beyond_the_rules_are_refused(api, idp, alice, assistant, grant):
    response = exchange(api, assistant, idp.token("alice-sub"), scope="write:jira-work")
    assert response.status_code == 403 and response.json()["error"] == "insufficient_scope"
    assert nothing_served(grant)
    within = exchange(api, assistant, idp.token("alice-sub"), scope="read:me")
    assert within.status_code == 200


def test_a_deactivated_user_gets_nothing(api, idp, alice, assistant, grant):
    alice.is_active = False
    alice.save()
    response = exchange(api, assistant, idp.token("alice-sub"))
    assert response.status_code == 400 and "access_token" not in response.json()
    assert nothing_served(grant)


def test_a_bad_client_is_invalid_client_before_the_subject_token_is_looked_at(
    api, idp, alice, assistant, grant
):
    service, _ = assistant
    response = exchange(api, (service, "wrong-secret"), idp.token("alice-sub"))
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"
    assert idp.jwks_fetches() == 0 and nothing_served(grant)


def test_an_on_behalf_of_rule_refuses_a_request_that_only_names_the_user(
    api, alice, assistant, grant, group, atlassian
):
    service, secret = assistant
    headers = {"HTTP_AUTHORIZATION": f"Bearer {fetch_token(api, service, secret)['access_token']}"}
    body = {"user": "alice", "provider": "atlassian"}
    response = api.post("/api/v1/access-token", body, content_type="application/json", **headers)
    assert response.status_code == 403 and response.json()["error"] == "on_behalf_of_required"
    [event] = audit_events(action="token.denied")
    assert event.detail["reason"] == "on_behalf_of_required" and event.subject_user == "alice"
    assert nothing_served(grant)
    # A grant also covered by an ordinary rule is served by name.
    alice.groups.add(group)
    AccessRule.objects.create(service=service, provider_app=atlassian, users_group=group)
    response = api.post("/api/v1/access-token", body, content_type="application/json", **headers)
    assert response.status_code == 200


@pytest.fixture
def signer(api, alice, jira_dc):
    service, secret = service_and_secret("jira-assistant")
    service.subject_audiences = [AUDIENCE]
    service.save()
    AccessRule.objects.create(
        service=service, provider_app=jira_dc, can_sign=True, on_behalf_of=True
    )
    headers = {"HTTP_AUTHORIZATION": f"Bearer {fetch_token(api, service, secret)['access_token']}"}
    return service, headers, consented_grant(alice, jira_dc, access_expires_at=None)


def sign(api, headers, grant, **extra):
    body = {"grant": str(grant.pk), "method": "GET", "url": MYSELF}
    return api.post("/api/v1/sign", body, content_type="application/json", **headers, **extra)


def test_signing_for_an_on_behalf_of_rule_needs_the_users_token(
    api, idp, signer, django_user_model
):
    service, headers, grant = signer
    refused = sign(api, headers, grant)
    assert refused.status_code == 403 and refused.json()["error"] == "on_behalf_of_required"
    bob = django_user_model.objects.create_user("bob")
    ExternalIdentity.objects.create(user=bob, issuer=idp.issuer, subject="bob-sub")
    for_bob = sign(api, headers, grant, HTTP_BROKER_SUBJECT_TOKEN=idp.token("bob-sub"))
    assert for_bob.status_code == 404 and "authorization" not in for_bob.json()
    expired = idp.token("alice-sub", exp=int(time.time()) - 60)
    stale = sign(api, headers, grant, HTTP_BROKER_SUBJECT_TOKEN=expired)
    assert stale.status_code == 400 and stale.json()["error"] == "invalid_request"
    assert not audit_events(action="request.signed")
    signed = sign(api, headers, grant, HTTP_BROKER_SUBJECT_TOKEN=idp.token("alice-sub"))
    assert signed.status_code == 200 and signed.json()["authorization"].startswith("OAuth ")
    [event] = audit_events(action="request.signed")
    assert event.subject_user == "alice" and event.service == service.client_id
    assert event.detail["on_behalf_of"] and event.detail["subject_issuer"] == idp.issuer


def test_the_commands_register_audiences_and_on_behalf_of_rules(atlassian):
    out = StringIO()
    call_command(
        "createserviceclient",
        "Assistant",
        "--subject-audience",
        "assistant-web",
        "--subject-audience",
        "chat",
        "--json",
        stdout=out,
    )
    client_id = json.loads(out.getvalue())["client_id"]
    assert ServiceClient.objects.get(client_id=client_id).subject_audiences == [
        "assistant-web",
        "chat",
    ]
    out = StringIO()
    call_command(
        "addaccessrule",
        client_id,
        "--provider",
        "atlassian",
        "--on-behalf-of",
        "--json",
        stdout=out,
    )
    assert json.loads(out.getvalue())["on_behalf_of"] is True
    assert AccessRule.objects.get(service__client_id=client_id).on_behalf_of


def test_the_admin_audit_filter_shows_which_services_acted_for_a_user(
    api, idp, alice, assistant, grant, client, django_user_model
):
    assert exchange(api, assistant, idp.token("alice-sub")).status_code == 200
    service, secret = assistant
    AccessRule.objects.filter(service=service).update(on_behalf_of=False)
    token = fetch_token(api, service, secret)["access_token"]
    by_name = api.post(  # for alice too, but not on her behalf
        "/api/v1/access-token",
        {"user": "alice", "provider": "atlassian"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )
    assert by_name.status_code == 200
    assert len(audit_events(subject_user="alice")) == 2
    admin = django_user_model.objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(admin)
    page = client.get(
        "/admin/broker/auditevent/",
        {"on_behalf_of": "yes", "subject_user": "alice", "at__gte": "2000-01-01"},
    )
    assert page.status_code == 200
    shown = [(e.service, e.action) for e in page.context["cl"].result_list]
    assert shown == [(service.client_id, "token.exchanged")]
