"""PATCH (RFC 7644 3.5.2) as Okta and Entra ID send it, applied to what the broker keeps.

Okta: `{"op": "replace", "value": {"active": false}}` (no path, an object of attributes);
for groups `{"op": "add", "path": "members", "value": [{"value": id}]}` and
`{"op": "remove", "path": "members[value eq \"id\"]"}`. Entra ID: capitalised operations
(`"Replace"`), a path per attribute (`active`, `name.givenName`,
`emails[type eq "work"].value`), booleans as strings (`"False"`), and members removed with
`{"op": "Remove", "path": "members", "value": [{"value": id}]}`. Operations are applied in
order to a copy; the result is written by accounts.scim.provisioning in one transaction,
so a refused operation anywhere leaves everything as it was.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from accounts.scim import resources
from accounts.scim.errors import ScimError, invalid_value
from accounts.scim.resources import UserFields

MAX_OPERATIONS = 1000
_OPS = {"add", "replace", "remove"}
_MEMBER_PATH = re.compile(r'members\[\s*value\s+eq\s+"([^"]*)"\s*\]', re.IGNORECASE)
_EMAIL_PATH = re.compile(r"emails(\[[^\]]*\])?(\.value)?", re.IGNORECASE)


@dataclass(frozen=True)
class Operation:
    op: str  # lower case
    path: str  # "" when absent
    value: Any


def operations(body: dict[str, Any]) -> list[Operation]:
    """The body's operations, checked for shape. Raises ScimError(400, invalidSyntax)."""
    listed = body.get("Operations")
    if not isinstance(listed, list) or not listed:
        raise ScimError(400, "A PatchOp needs a non-empty `Operations` list.", "invalidSyntax")
    if len(listed) > MAX_OPERATIONS:
        raise ScimError(400, f"At most {MAX_OPERATIONS} operations at once.", "tooMany")
    result = []
    for item in listed:
        if not isinstance(item, dict) or not isinstance(item.get("op"), str):
            raise ScimError(400, "Each operation needs an `op`.", "invalidSyntax")
        op = item["op"].lower()
        path = item.get("path", "")
        if op not in _OPS or not isinstance(path, str):
            raise ScimError(400, "`op` must be add, replace or remove.", "invalidSyntax")
        if op != "remove" and "value" not in item:
            raise ScimError(400, f"A {op} operation needs a `value`.", "invalidSyntax")
        if op == "remove" and not path:
            raise ScimError(400, "A remove operation needs a `path`.", "noTarget")
        result.append(Operation(op, path.strip(), item.get("value")))
    return result


def patched_user(fields: UserFields, ops: list[Operation]) -> UserFields:
    """`fields` with the operations applied, checked."""
    patched = dataclasses.replace(fields)
    for operation in ops:
        if operation.path:
            _set_user_attribute(patched, operation.path, operation)
        elif isinstance(operation.value, dict):
            for attribute, value in operation.value.items():
                _set_user_attribute(patched, str(attribute), Operation(operation.op, "", value))
        else:
            raise invalid_value("An operation without a path needs an object as its value.")
    return patched


def _set_user_attribute(fields: UserFields, path: str, operation: Operation) -> None:
    attribute = path.lower()
    removing = operation.op == "remove"
    value = None if removing else operation.value
    if attribute == "username":
        if removing:
            raise ScimError(400, "`userName` cannot be removed.", "mutability")
        fields.username = resources.username(value)
    elif attribute == "active":
        if removing:
            raise ScimError(400, "`active` cannot be removed.", "mutability")
        fields.active = resources.active(value)
    elif attribute == "externalid":
        fields.external_id = resources.text(value, "externalId", resources.EXTERNAL_ID_MAX_LENGTH)
    elif attribute == "name":
        fields.given_name, fields.family_name = resources.name_parts(value)
    elif attribute == "name.givenname":
        fields.given_name = resources.text(value, path, resources.NAME_MAX_LENGTH)
    elif attribute == "name.familyname":
        fields.family_name = resources.text(value, path, resources.NAME_MAX_LENGTH)
    elif _EMAIL_PATH.fullmatch(path):
        whole_list = not path.lower().endswith(".value")
        fields.email = (
            resources.primary_email(value)
            if whole_list and not removing
            else resources.email(value)
        )
    # Anything else (displayName, title, phone numbers, the enterprise extension) is not
    # kept by the broker: accepted and ignored, as IdPs send every attribute they map.


def patched_members(members: set[str], ops: list[Operation]) -> tuple[set[str], dict[str, str]]:
    """(SCIM user ids of the members after the operations, {"displayName" or "externalId":
    new value} for the other attributes changed). Unknown attributes are ignored."""
    result = set(members)
    changes: dict[str, str] = {}
    for operation in ops:
        pairs = (
            [(operation.path, operation.value)]
            if operation.path
            else list(_object_value(operation.value).items())
        )
        for path, value in pairs:
            result = _apply_group_attribute(result, changes, str(path), operation.op, value)
    return result, changes


def _object_value(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise invalid_value("An operation without a path needs an object as its value.")
    return value


def _apply_group_attribute(
    members: set[str], changes: dict[str, str], path: str, op: str, value: Any
) -> set[str]:
    attribute = path.lower()
    single = _MEMBER_PATH.fullmatch(path)
    if single:
        if op != "remove":
            raise ScimError(400, "Only remove may name one member by filter.", "invalidPath")
        return members - {single.group(1)}
    if attribute == "members":
        if op == "remove" and value is None:
            return set()
        ids = _member_ids(value)
        if op == "add":
            return members | ids
        if op == "remove":
            return members - ids
        return ids
    if attribute == "displayname":
        if op == "remove":
            raise ScimError(400, "`displayName` cannot be removed.", "mutability")
        changes["displayName"] = resources.text(
            value, "displayName", resources.NAME_MAX_LENGTH, required=True
        )
    elif attribute == "externalid":
        changes["externalId"] = resources.text(
            None if op == "remove" else value, "externalId", resources.EXTERNAL_ID_MAX_LENGTH
        )
    return members


def _member_ids(value: Any) -> set[str]:
    if value is None:
        return set()
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(
        isinstance(item, dict) and isinstance(item.get("value"), str) for item in value
    ):
        raise invalid_value('`members` must be a list of {"value": "<user id>"} objects.')
    return {item["value"] for item in value}
