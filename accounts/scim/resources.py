"""Users and groups as SCIM resources (RFC 7643 4.1, 4.2), and SCIM documents read into the
fields the broker keeps. Attributes the broker does not keep (phone numbers, titles, the
enterprise extension, passwords: a SCIM user signs in by single sign-on only) are accepted
and ignored, as IdPs send them whatever the application keeps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db.models import Prefetch, QuerySet
from django.http import HttpRequest

from accounts.models import ScimGroup, ScimUser, User
from accounts.scim.errors import invalid_value

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
LIST_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
NAME_MAX_LENGTH = 150  # Django's user and group names, first and last names
EXTERNAL_ID_MAX_LENGTH = 255
EMAIL_MAX_LENGTH = 254


def location(request: HttpRequest, kind: str, resource_id: object) -> str:
    return request.build_absolute_uri(f"/scim/v2/{kind}/{resource_id}")


def _meta(request: HttpRequest, kind: str, row: ScimUser | ScimGroup) -> dict[str, str]:
    return {
        "resourceType": kind[:-1],
        "created": row.created_at.isoformat(),
        "lastModified": row.updated_at.isoformat(),
        "location": location(request, kind, row.pk),
    }


def with_groups(rows: QuerySet[ScimUser]) -> QuerySet[ScimUser]:
    """`rows` with their users' SCIM groups fetched in one query for the whole page."""
    return rows.select_related("user").prefetch_related(
        Prefetch(
            "user__groups",
            queryset=Group.objects.filter(scim__isnull=False).select_related("scim"),
            to_attr="scim_groups",
        )
    )


def _scim_groups(user: User) -> list[Group]:
    groups: list[Group] | None = getattr(user, "scim_groups", None)
    if groups is None:
        groups = list(user.groups.filter(scim__isnull=False).select_related("scim"))
    return groups


def user_resource(request: HttpRequest, scim_user: ScimUser) -> dict[str, Any]:
    user = scim_user.user
    resource: dict[str, Any] = {
        "schemas": [USER_SCHEMA],
        "id": str(scim_user.pk),
        "userName": user.username,
        "name": {"givenName": user.first_name, "familyName": user.last_name},
        "displayName": user.get_full_name() or user.username,
        "active": user.is_active,
        "emails": ([{"value": user.email, "type": "work", "primary": True}] if user.email else []),
        "groups": [
            {"value": str(group.scim.pk), "display": group.name} for group in _scim_groups(user)
        ],
        "meta": _meta(request, "Users", scim_user),
    }
    if scim_user.external_id:
        resource["externalId"] = scim_user.external_id
    return resource


def group_resource(
    request: HttpRequest, scim_group: ScimGroup, with_members: bool = True
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "schemas": [GROUP_SCHEMA],
        "id": str(scim_group.pk),
        "displayName": scim_group.group.name,
        "meta": _meta(request, "Groups", scim_group),
    }
    if with_members:
        # Only members SCIM made: a group adopted from single sign-on may hold others.
        members = ScimUser.objects.filter(user__groups=scim_group.group).select_related("user")
        resource["members"] = [
            {
                "value": str(member.pk),
                "display": member.user.username,
                "$ref": location(request, "Users", member.pk),
            }
            for member in members.order_by("created_at", "pk")
        ]
    if scim_group.external_id:
        resource["externalId"] = scim_group.external_id
    return resource


@dataclass
class UserFields:
    """What the broker keeps of a SCIM user; `active` None leaves it as it is."""

    username: str
    given_name: str = ""
    family_name: str = ""
    email: str = ""
    active: bool | None = None
    external_id: str = ""

    @classmethod
    def of(cls, scim_user: ScimUser) -> UserFields:
        user = scim_user.user
        return cls(
            user.username,
            user.first_name,
            user.last_name,
            user.email,
            user.is_active,
            scim_user.external_id,
        )


def storable(value: str) -> bool:
    """Whether a database can hold `value`: JSON's `\\ud800` escape decodes to a lone
    surrogate, which no UTF-8 column takes (the insert would fail, a 500)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def text(value: Any, name: str, max_length: int, *, required: bool = False) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise invalid_value(f"`{name}` must be a {'non-empty ' if required else ''}string.")
    if len(value) > max_length:
        raise invalid_value(f"`{name}` is longer than {max_length} characters.")
    if "\x00" in value or not storable(value):
        raise invalid_value(f"`{name}` holds a NUL character or an unpaired surrogate.")
    return value


def username(value: Any) -> str:
    name = text(value, "userName", NAME_MAX_LENGTH, required=True)
    try:
        User.username_validator(name)
    except ValidationError:
        raise invalid_value(
            "`userName` may hold only letters, digits and @ . + - _ (the username single "
            "sign-on gives the person)."
        ) from None
    return name


def email(value: Any) -> str:
    address = text(value, "emails.value", EMAIL_MAX_LENGTH)
    if address:
        try:
            validate_email(address)
        except ValidationError:
            raise invalid_value("An email address is not valid.") from None
    return address


def active(value: Any) -> bool:
    """A boolean; Entra ID sends "True" and "False" as strings in PATCH operations."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise invalid_value("`active` must be true or false.")


def primary_email(value: Any) -> str:
    """The primary (else the first) address of an `emails` list."""
    if value is None:
        return ""
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise invalid_value("`emails` must be a list of objects.")
    chosen = next((item for item in value if item.get("primary") is True), None)
    chosen = chosen or (value[0] if value else {})
    return email(chosen.get("value"))


def name_parts(value: Any) -> tuple[str, str]:
    if value is None:
        return "", ""
    if not isinstance(value, dict):
        raise invalid_value("`name` must be an object.")
    return (
        text(value.get("givenName"), "name.givenName", NAME_MAX_LENGTH),
        text(value.get("familyName"), "name.familyName", NAME_MAX_LENGTH),
    )


def user_fields(body: dict[str, Any]) -> UserFields:
    """A whole User (POST, PUT), checked."""
    given, family = name_parts(body.get("name"))
    return UserFields(
        username=username(body.get("userName")),
        given_name=given,
        family_name=family,
        email=primary_email(body.get("emails")),
        active=active(body["active"]) if "active" in body else None,
        external_id=text(body.get("externalId"), "externalId", EXTERNAL_ID_MAX_LENGTH),
    )
