"""Bad tokens and malformed bodies: a SCIM error body (RFC 7644 3.12) with its status and
`scimType`, and nothing written (no user, no group, no membership, no audit event)."""

from __future__ import annotations

import io
import json

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command

from accounts.models import ScimConnection, ScimGroup, ScimUser, User
from broker.models import AuditEvent
from tests.scim.conftest import ScimClient, create_token, patch_op

pytestmark = pytest.mark.django_db

ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
USER = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "mallory"}


def nothing_written() -> bool:
    return (
        not ScimUser.objects.exists()
        and not ScimGroup.objects.exists()
        and not User.objects.filter(username="mallory").exists()
        and not Group.objects.exclude(name="auditor").exists()  # made by a migration
        and not AuditEvent.objects.exclude(action="scim.token_issued").exists()
    )


def assert_scim_error(response, status: int, scim_type: str | None = None) -> None:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/scim+json"
    body = response.json()
    assert body["schemas"] == [ERROR] and body["status"] == str(status) and body["detail"]
    if scim_type:
        assert body["scimType"] == scim_type


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer ",
        "Bearer bkscim_000000000000_wrong",
        "Basic b2t0YTpzZWNyZXQ=",
        "Bearer {token}x",  # one character too many
        "Bearer {rotated}",
    ],
)
@pytest.mark.parametrize("method", ["get", "post", "put", "patch", "delete"])
def test_a_bad_token_is_refused_with_nothing_written(okta, authorization, method):
    rotated = okta.token
    okta.token = create_token("okta")  # rotation: the previous token stops at once
    AuditEvent.objects.all().delete()
    headers = {}
    if authorization is not None:
        headers["HTTP_AUTHORIZATION"] = authorization.format(token=okta.token, rotated=rotated)
    body = json.dumps(USER)
    path = "/scim/v2/Users" if method in ("get", "post") else f"/scim/v2/Users/{'0' * 32}"
    send = getattr(okta.client, method)
    response = (
        send(path, **headers)
        if method in ("get", "delete")
        else send(path, body, content_type="application/scim+json", **headers)
    )
    assert_scim_error(response, 401)
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert nothing_written()


def test_a_disabled_connection_is_refused(okta):
    ScimConnection.objects.update(enabled=False)
    assert_scim_error(okta.post("/Users", USER), 401)
    assert nothing_written()


@pytest.mark.parametrize(
    "body, scim_type",
    [
        ("{not json", "invalidSyntax"),
        ("[]", "invalidSyntax"),
        ("[" * 5000, "invalidSyntax"),
        ({**USER, "userName": ""}, "invalidValue"),
        ({**USER, "userName": 7}, "invalidValue"),
        ({**USER, "userName": "bad name/"}, "invalidValue"),
        ({**USER, "userName": "x" * 151}, "invalidValue"),
        ({**USER, "active": "maybe"}, "invalidValue"),
        ({**USER, "emails": "mallory@example.com"}, "invalidValue"),
        ({**USER, "emails": [{"value": "not an address"}]}, "invalidValue"),
        ({**USER, "name": ["Mallory"]}, "invalidValue"),
        ({**USER, "externalId": "a\x00b"}, "invalidValue"),
        ('{"userName": "m", "name": {"givenName": "\\ud800"}}', "invalidValue"),
        ('{"userName": "m", "externalId": "\\udfff"}', "invalidValue"),
    ],
)
def test_a_malformed_user_is_refused_with_nothing_written(okta, body, scim_type):
    AuditEvent.objects.all().delete()
    assert_scim_error(okta.post("/Users", body), 400, scim_type)
    assert nothing_written()


@pytest.mark.parametrize(
    "operations, scim_type",
    [
        ({"Operations": []}, "invalidSyntax"),
        ({"Operations": "replace"}, "invalidSyntax"),
        ({}, "invalidSyntax"),
        (patch_op({"op": "frobnicate", "path": "active", "value": False}), "invalidSyntax"),
        (patch_op({"op": "replace", "path": "active"}), "invalidSyntax"),
        (patch_op({"op": "remove"}), "noTarget"),
        (patch_op({"op": "remove", "path": "active"}), "mutability"),
        (patch_op({"op": "replace", "path": "active", "value": "nope"}), "invalidValue"),
        (patch_op({"op": "replace", "value": False}), "invalidValue"),
        # A valid first operation is not written when a later one is refused.
        (
            patch_op(
                {"op": "replace", "path": "active", "value": False},
                {"op": "replace", "path": "userName", "value": ""},
            ),
            "invalidValue",
        ),
    ],
)
def test_a_malformed_patch_changes_nothing(okta, operations, scim_type):
    user_id = okta.post("/Users", {**USER, "name": {"givenName": "M"}}).json()["id"]
    before = list(AuditEvent.objects.values_list("pk", flat=True))
    assert_scim_error(okta.patch(f"/Users/{user_id}", operations), 400, scim_type)
    user = User.objects.get(username="mallory")
    assert user.is_active and user.first_name == "M"
    assert list(AuditEvent.objects.values_list("pk", flat=True)) == before


def test_a_body_over_the_size_limit_is_a_scim_413_with_nothing_written(okta, settings):
    AuditEvent.objects.all().delete()
    body = {**USER, "externalId": "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)}
    assert_scim_error(okta.post("/Users", body), 413)
    assert nothing_written()


def test_group_refusals_write_nothing(okta):
    AuditEvent.objects.all().delete()
    group = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"]}
    assert_scim_error(okta.post("/Groups", {**group, "displayName": ""}), 400, "invalidValue")
    assert_scim_error(
        okta.post("/Groups", {**group, "displayName": "auditor"}), 400, "invalidValue"
    )
    unknown_member = {**group, "displayName": "eng", "members": [{"value": "no-such-user"}]}
    assert_scim_error(okta.post("/Groups", unknown_member), 400, "invalidValue")
    assert nothing_written()


def test_bad_filters_and_unknown_resources_are_scim_errors(okta):
    assert_scim_error(okta.get('/Users?filter=userName co "a"'), 400, "invalidFilter")
    assert_scim_error(okta.get('/Users?filter=password eq "a"'), 400, "invalidFilter")
    assert_scim_error(okta.get('/Users?filter=userName eq "a" or userName eq "b"'), 400,
                      "invalidFilter")  # fmt: skip
    assert_scim_error(okta.get("/Users?count=lots"), 400, "invalidValue")
    assert_scim_error(okta.get('/Users?filter=userName eq "\\ud800"'), 400, "invalidFilter")
    assert_scim_error(okta.get('/Groups?filter=displayName eq "a\\u0000"'), 400, "invalidFilter")
    assert okta.get(f"/Users?startIndex={10**30}").json()["Resources"] == []
    assert_scim_error(okta.get("/Users/not-a-uuid"), 404)
    assert_scim_error(okta.get(f"/Groups/{'0' * 32}"), 404)
    assert_scim_error(okta.get("/Bulk"), 404)
    assert_scim_error(okta.post("/ServiceProviderConfig", {}), 405)


def test_createscimtoken_shows_the_token_once_and_stores_only_its_digest(db):
    out = io.StringIO()
    call_command("createscimtoken", "okta", "--json", stdout=out)
    token = json.loads(out.getvalue())["token"]
    connection = ScimConnection.objects.get(name="okta")
    stored = json.dumps(list(ScimConnection.objects.values()), default=str)
    assert token not in stored and token[-4:] == connection.token_last4
    assert token.startswith("bkscim_")
    assert AuditEvent.objects.get(action="scim.token_issued").detail["scim_connection"] == "okta"
    assert ScimClient(token).get("/Users").status_code == 200
