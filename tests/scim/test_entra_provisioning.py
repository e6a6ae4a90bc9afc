"""A provisioning run as Entra ID sends it (Microsoft's "Develop a SCIM endpoint" request
shapes: the enterprise extension, capitalised PATCH operations with a path each, `"False"`
as a string, members removed by value, a membership check by filter, soft delete)."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group

from accounts.models import ScimUser, User
from broker.models import AuditEvent
from tests.scim.conftest import patch_op

pytestmark = pytest.mark.django_db

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
NAME = "Test_User_ab6490ee-1e48-479e-a20b-2d77186b5dd1"


def entra_user() -> dict:
    return {
        "schemas": [USER, ENTERPRISE],
        "externalId": "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef",
        "userName": NAME,
        "active": True,
        "emails": [{"primary": True, "type": "work", "value": "Test_User_fd0ea19b@testuser.com"}],
        "meta": {"resourceType": "User"},
        "name": {
            "formatted": "givenName familyName",
            "familyName": "familyName",
            "givenName": "givenName",
        },  # fmt: skip
        "roles": [],
        ENTERPRISE: {"department": "Engineering", "manager": {"value": "boss"}},
    }


def test_entra_creates_updates_and_deletes_a_user(entra):
    assert entra.get(f'/Users?filter=userName eq "{NAME}"').json()["totalResults"] == 0
    created = entra.post("/Users", entra_user())
    assert created.status_code == 201, created.content
    user_id = created.json()["id"]
    duplicate = entra.post("/Users", entra_user())
    assert duplicate.status_code == 409 and duplicate.json()["scimType"] == "uniqueness"

    updated = entra.patch(
        f"/Users/{user_id}",
        patch_op(
            {"op": "Replace", "path": "name.givenName", "value": "Grace"},
            {"op": "Add", "path": 'emails[type eq "work"].value', "value": "grace@example.com"},
            {"op": "Replace", "path": "externalId", "value": "new-object-id"},
            {"op": "Add", "path": f"{ENTERPRISE}:manager", "value": "someone"},
            {"op": "Replace", "path": "displayName", "value": "Grace H"},
        ),
    )
    assert updated.status_code == 200, updated.content
    user = User.objects.get(username=NAME)
    assert (user.first_name, user.email) == ("Grace", "grace@example.com")
    assert updated.json()["externalId"] == "new-object-id"
    assert entra.get('/Users?filter=externalId eq "new-object-id"').json()["totalResults"] == 1

    off = entra.patch(
        f"/Users/{user_id}", patch_op({"op": "Replace", "path": "active", "value": "False"})
    )
    assert off.status_code == 200 and off.json()["active"] is False
    assert not User.objects.get(pk=user.pk).is_active

    renamed = entra.patch(
        f"/Users/{user_id}", patch_op({"op": "Replace", "path": "userName", "value": "grace"})
    )
    assert renamed.json()["userName"] == "grace"

    assert entra.delete(f"/Users/{user_id}").status_code == 204
    assert entra.get(f"/Users/{user_id}").status_code == 404
    kept = User.objects.get(pk=user.pk)  # the account and its grants stay, inactive
    assert not kept.is_active and not ScimUser.objects.exists()
    assert list(
        AuditEvent.objects.filter(action__startswith="scim.user")
        .order_by("id")
        .values_list("action", flat=True)
    ) == [
        "scim.user_created",
        "scim.user_updated",
        "scim.user_deactivated",
        "scim.user_updated",
        "scim.user_deleted",
    ]


def test_entra_manages_group_membership(entra):
    user_id = entra.post("/Users", entra_user()).json()["id"]
    created = entra.post(
        "/Groups",
        {"schemas": [GROUP], "externalId": "8aa1a0c0-c4c3-4bc0-b4a5-2ef676900159",
         "displayName": "Group1DisplayName", "meta": {"resourceType": "Group"}},
    )  # fmt: skip
    assert created.status_code == 201, created.content
    group_id = created.json()["id"]
    assert (
        entra.get('/Groups?filter=displayName eq "Group1DisplayName"').json()["totalResults"] == 1
    )

    added = entra.patch(
        f"/Groups/{group_id}",
        patch_op({"op": "Add", "path": "members", "value": [{"$ref": None, "value": user_id}]}),
    )
    assert added.status_code == 200, added.content
    member_check = (
        f'/Groups?excludedAttributes=members&filter=id eq "{group_id}" and members eq "{user_id}"'
    )
    assert entra.get(member_check).json()["totalResults"] == 1
    assert list(Group.objects.get(name="Group1DisplayName").user_set.values_list(
        "username", flat=True)) == [NAME]  # fmt: skip

    removed = entra.patch(
        f"/Groups/{group_id}",
        patch_op({"op": "Remove", "path": "members", "value": [{"$ref": None, "value": user_id}]}),
    )
    assert removed.status_code == 200 and removed.json()["members"] == []
    assert entra.get(member_check).json()["totalResults"] == 0

    renamed = entra.patch(
        f"/Groups/{group_id}",
        patch_op({"op": "Replace", "path": "displayName", "value": "1879db59-3bdf-4490"}),
    )
    assert renamed.json()["displayName"] == "1879db59-3bdf-4490"
    assert entra.get(f"/Groups/{group_id}?excludedAttributes=members").status_code == 200
