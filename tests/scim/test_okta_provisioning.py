"""A provisioning run as Okta sends it (Okta's SCIM 2.0 reference: create after a
`userName eq` look-up, PUT for profile updates, PATCH `active` for (de)activation, groups
pushed with PATCH `members` add/remove), with every change audited."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group

from accounts.models import ScimGroup, ScimUser, User
from broker.models import AuditEvent
from tests.scim.conftest import patch_op

pytestmark = pytest.mark.django_db

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"


def okta_user(active: bool = True, given: str = "Isaac") -> dict:
    return {
        "schemas": [USER],
        "userName": "isaac.brock@example.com",
        "name": {"givenName": given, "familyName": "Brock"},
        "emails": [{"primary": True, "value": "isaac.brock@example.com", "type": "work"}],
        "displayName": f"{given} Brock",
        "locale": "en-US",
        "externalId": "00ujl29u0le5T6Aj10h7",
        "groups": [],
        "password": "1mz050nq",
        "active": active,
    }


def actions() -> list[str]:
    return list(
        AuditEvent.objects.filter(action__startswith="scim.user")
        .exclude(action="scim.token_issued")
        .order_by("id")
        .values_list("action", flat=True)
    )


def test_okta_creates_finds_updates_deactivates_and_reactivates_a_user(okta):
    lookup = okta.get('/Users?filter=userName eq "isaac.brock@example.com"&startIndex=1&count=100')
    assert lookup.status_code == 200 and lookup["Content-Type"] == "application/scim+json"
    assert lookup.json()["totalResults"] == 0 and lookup.json()["Resources"] == []

    created = okta.post("/Users", okta_user())
    assert created.status_code == 201, created.content
    body = created.json()
    user_id = body["id"]
    assert body["userName"] == "isaac.brock@example.com" and body["active"] is True
    assert body["externalId"] == "00ujl29u0le5T6Aj10h7"
    assert created["Location"].endswith(f"/scim/v2/Users/{user_id}")
    user = User.objects.get(username="isaac.brock@example.com")
    assert user.email == "isaac.brock@example.com" and user.first_name == "Isaac"
    assert not user.has_usable_password()  # Okta's password is never kept: SSO only

    again = okta.get('/Users?filter=userName eq "ISAAC.BROCK@example.com"')
    assert [r["id"] for r in again.json()["Resources"]] == [user_id]  # caseExact false

    replaced = okta.put(f"/Users/{user_id}", {**okta_user(given="Ike"), "id": user_id})
    assert replaced.status_code == 200 and replaced.json()["name"]["givenName"] == "Ike"

    off = okta.patch(f"/Users/{user_id}", patch_op({"op": "replace", "value": {"active": False}}))
    assert off.status_code == 200 and off.json()["active"] is False
    assert not User.objects.get(pk=user.pk).is_active

    on = okta.patch(f"/Users/{user_id}", patch_op({"op": "replace", "value": {"active": True}}))
    assert on.json()["active"] is True and User.objects.get(pk=user.pk).is_active
    assert okta.get(f"/Users/{user_id}").json()["name"] == {
        "givenName": "Ike",
        "familyName": "Brock",
    }
    assert actions() == [
        "scim.user_created",
        "scim.user_updated",
        "scim.user_deactivated",
        "scim.user_reactivated",
    ]
    event = AuditEvent.objects.get(action="scim.user_deactivated")
    assert event.actor == "scim:okta" and event.subject_user == "isaac.brock@example.com"


def test_okta_pushes_a_group_and_its_members(okta):
    user_id = okta.post("/Users", okta_user()).json()["id"]
    other = okta.post(
        "/Users", {**okta_user(), "userName": "ada@example.com", "externalId": "00u2"}
    ).json()["id"]

    created = okta.post(
        "/Groups", {"schemas": [GROUP], "displayName": "engineering", "members": []}
    )
    assert created.status_code == 201, created.content
    group_id = created.json()["id"]
    added = okta.patch(
        f"/Groups/{group_id}",
        patch_op(
            {
                "op": "add",
                "path": "members",
                "value": [
                    {"value": user_id, "display": "isaac.brock@example.com"},
                    {"value": other, "display": "ada@example.com"},
                ],
            }
        ),
    )
    assert added.status_code == 200, added.content
    assert sorted(m["value"] for m in added.json()["members"]) == sorted([user_id, other])
    assert Group.objects.get(name="engineering").user_set.count() == 2

    removed = okta.patch(
        f"/Groups/{group_id}",
        patch_op({"op": "remove", "path": f'members[value eq "{other}"]'}),
    )
    assert [m["value"] for m in removed.json()["members"]] == [user_id]

    renamed = okta.patch(
        f"/Groups/{group_id}",
        patch_op({"op": "replace", "value": {"id": group_id, "displayName": "platform"}}),
    )
    assert renamed.json()["displayName"] == "platform"
    user_groups = okta.get(f"/Users/{user_id}").json()["groups"]
    assert user_groups == [{"value": group_id, "display": "platform"}]

    listed = okta.get('/Groups?filter=displayName eq "platform"&excludedAttributes=members')
    assert listed.json()["totalResults"] == 1 and "members" not in listed.json()["Resources"][0]

    assert okta.delete(f"/Groups/{group_id}").status_code == 204
    assert not ScimGroup.objects.exists()
    assert Group.objects.get(name="platform").user_set.count() == 0  # kept for its rules
    assert list(
        AuditEvent.objects.filter(action__startswith="scim.group")
        .order_by("id")
        .values_list("action", flat=True)
    ) == [
        "scim.group_created",
        "scim.group_member_added",
        "scim.group_member_added",
        "scim.group_member_removed",
        "scim.group_renamed",
        "scim.group_member_removed",
        "scim.group_deleted",
    ]


def test_lists_are_paged_with_start_index_and_count(okta):
    for n in range(5):
        okta.post("/Users", {**okta_user(), "userName": f"user{n}", "externalId": str(n)})
    page = okta.get("/Users?startIndex=2&count=2").json()
    assert page["totalResults"] == 5 and page["startIndex"] == 2 and page["itemsPerPage"] == 2
    assert [r["userName"] for r in page["Resources"]] == ["user1", "user2"]
    assert okta.get("/Users?startIndex=0&count=-1").json()["itemsPerPage"] == 0


def test_a_connection_sees_only_the_users_it_provisioned(okta, entra, owner):
    user_id = okta.post("/Users", okta_user()).json()["id"]
    assert entra.get(f"/Users/{user_id}").status_code == 404
    assert entra.get("/Users").json()["totalResults"] == 0
    refused = entra.patch(f"/Users/{user_id}", patch_op({"op": "replace", "path": "active",
                                                         "value": False}))  # fmt: skip
    assert refused.status_code == 404
    assert User.objects.get(username="isaac.brock@example.com").is_active
    # An account SCIM did not make is neither listed nor taken over.
    taken = okta.post("/Users", {**okta_user(), "userName": owner.username})
    assert taken.status_code == 409 and taken.json()["scimType"] == "uniqueness"
    assert ScimUser.objects.count() == 1


def test_discovery_documents_describe_what_is_supported(okta):
    config = okta.get("/ServiceProviderConfig").json()
    assert config["patch"]["supported"] is True and config["bulk"]["supported"] is False
    assert config["authenticationSchemes"][0]["type"] == "oauthbearertoken"
    types = okta.get("/ResourceTypes").json()
    assert {r["id"] for r in types["Resources"]} == {"User", "Group"}
    assert okta.get("/ResourceTypes/User").json()["endpoint"] == "/Users"
    schemas = okta.get("/Schemas").json()
    assert {s["id"] for s in schemas["Resources"]} == {USER, GROUP}
    assert okta.get(f"/Schemas/{USER}").json()["name"] == "User"


def test_a_page_of_users_with_their_groups_takes_a_fixed_number_of_queries(
    okta, django_assert_max_num_queries
):
    ids = [
        okta.post("/Users", {**okta_user(), "userName": f"u{n}", "externalId": str(n)}).json()["id"]
        for n in range(30)
    ]
    members = [{"value": user_id} for user_id in ids]
    okta.post("/Groups", {"schemas": [GROUP], "displayName": "eng", "members": members})
    with django_assert_max_num_queries(8):
        page = okta.get("/Users?count=50").json()
    assert page["itemsPerPage"] == 30
    assert all(user["groups"][0]["display"] == "eng" for user in page["Resources"])
