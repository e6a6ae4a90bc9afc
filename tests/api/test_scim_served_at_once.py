"""SCIM changes take effect for every request after they commit (DESIGN.md, "Identity,
round two"): Okta's PATCH `active: false` under concurrent fetches through gunicorn leaves
no answer served after it, and a user taken out of a SCIM group loses a `group:NAME` rule's
rights on the next request."""

from __future__ import annotations

from typing import Any

import pytest

from accounts.models import User
from broker.models import AccessRule, AuditEvent
from tests.api.test_served_at_once import _served_after
from tests.factories import consented_grant
from tests.gunicorn_server import gunicorn
from tests.scim.conftest import ScimClient, create_token, patch_op

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/api/v1/access-token"
USER = "urn:ietf:params:scim:schemas:core:2.0:User"


@pytest.fixture(scope="module")
def broker_url(tmp_path_factory, django_db_setup, django_db_blocker) -> Any:
    """One gunicorn (gunicorn.conf.py) on the test database, as in test_served_at_once."""
    with gunicorn(tmp_path_factory.mktemp("gunicorn") / "gunicorn.log") as url:
        yield url


@pytest.fixture
def okta(db) -> ScimClient:
    return ScimClient(create_token("okta"))


@pytest.fixture
def provisioned(okta) -> tuple[str, User]:
    """A user Okta provisioned: (SCIM id, broker user)."""
    created = okta.post(
        "/Users",
        {
            "schemas": [USER],
            "userName": "leaver@example.com",
            "name": {"givenName": "Lee", "familyName": "Ver"},
            "emails": [{"primary": True, "value": "leaver@example.com", "type": "work"}],
            "externalId": "00uleaver",
            "active": True,
        },
    )
    assert created.status_code == 201, created.content
    return created.json()["id"], User.objects.get(username="leaver@example.com")


def fetch(api, body: dict[str, Any], headers: dict[str, str]) -> Any:
    return api.post(URL, body, content_type="application/json", **headers)


@pytest.mark.slow
def test_scim_deactivation_serves_nothing_after_it_commits_under_load(
    broker_url,
    okta,
    provisioned,
    atlassian,
    rule,
    bearer,
):
    scim_id, leaver = provisioned
    grant = consented_grant(leaver, atlassian, scopes=["read:me", "read:jira-work"])
    headers = {"Authorization": bearer()["HTTP_AUTHORIZATION"]}

    def deactivate() -> None:
        """Okta's PATCH, answered in this thread: its commit is the one `_served_after`
        times (a request to gunicorn would wait on this thread's open transaction)."""
        answer = okta.patch(
            f"/Users/{scim_id}", patch_op({"op": "replace", "value": {"active": False}})
        )
        assert answer.status_code == 200 and answer.json()["active"] is False, answer.content

    before, refused, served_after = _served_after(
        broker_url, headers, {"user": leaver.username, "provider": "atlassian"},
        deactivate,
    )  # fmt: skip
    assert before > 10  # the load ran, and was served
    assert refused > 10
    assert served_after == []
    assert not User.objects.get(pk=leaver.pk).is_active
    assert AuditEvent.objects.filter(action="scim.user_deactivated").count() == 1
    assert grant.pk  # kept: reactivation restores access, `revokegrants --user` ends it


def test_leaving_a_scim_group_takes_a_group_rule_away_at_once(
    api, okta, provisioned, atlassian, rule, bearer
):
    scim_id, member = provisioned
    grant = consented_grant(member, atlassian, scopes=["read:me", "read:jira-work"])
    group = okta.post(
        "/Groups",
        {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "eng",
         "members": [{"value": scim_id}]},
    )  # fmt: skip
    assert group.status_code == 201, group.content
    AccessRule.objects.filter(pk=rule.pk).update(users_group=member.groups.get(name="eng"))
    headers = bearer()
    served = fetch(api, {"grant": str(grant.pk)}, headers)
    assert served.status_code == 200 and served.json()["access_token"] == grant.unseal(
        "access_token"
    )

    left = okta.patch(
        f"/Groups/{group.json()['id']}",
        patch_op({"op": "remove", "path": f'members[value eq "{scim_id}"]'}),
    )
    assert left.status_code == 200 and left.json()["members"] == []
    refused = fetch(api, {"grant": str(grant.pk)}, headers)
    assert refused.status_code == 404 and "access_token" not in refused.json()


def test_scim_deactivation_stops_the_token_on_the_next_request(
    api, okta, provisioned, atlassian, rule, bearer
):
    scim_id, leaver = provisioned
    grant = consented_grant(leaver, atlassian, scopes=["read:me", "read:jira-work"])
    headers = bearer()
    assert fetch(api, {"grant": str(grant.pk)}, headers).status_code == 200
    off = okta.patch(
        f"/Users/{scim_id}", patch_op({"op": "Replace", "path": "active", "value": "False"})
    )
    assert off.status_code == 200
    refused = fetch(api, {"grant": str(grant.pk)}, headers)
    assert refused.status_code in (403, 404, 409) and "access_token" not in refused.json()
    signed = api.post(
        "/api/v1/sign",
        {"grant": str(grant.pk), "method": "GET", "url": "https://api.atlassian.com/me"},
        content_type="application/json",
        **headers,
    )
    assert signed.status_code >= 400 and "authorization" not in signed.json()
