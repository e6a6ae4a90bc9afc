"""The one writer of what SCIM changes: users, their deactivation, groups and memberships.

Each change is made and audited in one transaction, with the rows it changes locked, so
an event is recorded exactly when its change commits. A deactivation is the user's
`is_active` turned false: every answer of the broker reads it from the database in the
request that gives it (broker.api.rules), so from that commit on no token, signature,
proxied call or exchange is served for the user, and no refresh runs.

An IdP connection sees and changes only the users and groups it provisioned; a username
taken by any other account is a `uniqueness` conflict (409), never a takeover of it.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth.models import Group
from django.db import IntegrityError, transaction
from django.http import HttpRequest

from accounts.models import AUDITOR_GROUP, ScimConnection, ScimGroup, ScimUser, User
from accounts.scim import patch
from accounts.scim.errors import ScimError, invalid_value
from accounts.scim.resources import UserFields
from broker.audit import trail


def _not_found(kind: str) -> ScimError:
    return ScimError(404, f"No such {kind}.")


def _uuid(resource_id: str, kind: str) -> uuid.UUID:
    try:
        return uuid.UUID(resource_id)
    except ValueError:
        raise _not_found(kind) from None


def _event(action: str, connection: ScimConnection, request: HttpRequest, **fields: Any) -> None:
    trail.record(
        action,
        actor_type=trail.ActorType.SYSTEM,
        actor=f"scim:{connection.name}",
        request=request,
        **fields,
    )


def _username_taken(name: str, but: User | None = None) -> bool:
    taken = User.objects.filter(username__iexact=name)
    if but is not None:
        taken = taken.exclude(pk=but.pk)
    return taken.exists()


def _conflict(name: str) -> ScimError:
    return ScimError(409, f"The userName {name!r} is already taken.", "uniqueness")


def user_of(connection: ScimConnection, resource_id: str, *, lock: bool = False) -> ScimUser:
    rows = ScimUser.objects.select_related("user").filter(connection=connection)
    if lock:
        rows = rows.select_for_update()
    found = rows.filter(pk=_uuid(resource_id, "user")).first()
    if found is None:
        raise _not_found("user")
    return found


def create_user(connection: ScimConnection, fields: UserFields, request: HttpRequest) -> ScimUser:
    try:
        with transaction.atomic():
            if _username_taken(fields.username):
                raise _conflict(fields.username)
            user = User.objects.create_user(  # no usable password: single sign-on only
                fields.username,
                email=fields.email,
                first_name=fields.given_name,
                last_name=fields.family_name,
                is_active=fields.active is not False,
            )
            scim_user = ScimUser.objects.create(
                user=user, connection=connection, external_id=fields.external_id
            )
            _event(
                "scim.user_created",
                connection,
                request,
                subject_user=user.username,
                scim_id=str(scim_user.pk),
                active=user.is_active,
            )
    except IntegrityError:  # the same userName created at the same moment
        raise _conflict(fields.username) from None
    return scim_user


def update_user(
    connection: ScimConnection,
    resource_id: str,
    request: HttpRequest,
    *,
    replacement: UserFields | None = None,
    operations: list[patch.Operation] | None = None,
) -> ScimUser:
    """PUT (`replacement`) or PATCH (`operations`) of a user."""
    try:
        with transaction.atomic():
            scim_user = user_of(connection, resource_id, lock=True)
            current = UserFields.of(scim_user)
            wanted = replacement or patch.patched_user(current, operations or [])
            _write_user(connection, scim_user, current, wanted, request)
    except IntegrityError:
        raise _conflict(wanted.username) from None
    return scim_user


def _write_user(
    connection: ScimConnection,
    scim_user: ScimUser,
    current: UserFields,
    wanted: UserFields,
    request: HttpRequest,
) -> None:
    user = scim_user.user
    if wanted.username != current.username and _username_taken(wanted.username, but=user):
        raise _conflict(wanted.username)
    changed = [
        name
        for name in ("username", "given_name", "family_name", "email", "external_id")
        if getattr(wanted, name) != getattr(current, name)
    ]
    user.username = wanted.username
    user.first_name = wanted.given_name
    user.last_name = wanted.family_name
    user.email = wanted.email
    activity_changed = wanted.active is not None and wanted.active != user.is_active
    if activity_changed:
        user.is_active = bool(wanted.active)
    user.save(update_fields=["username", "first_name", "last_name", "email", "is_active"])
    scim_user.external_id = wanted.external_id
    scim_user.save(update_fields=["external_id", "updated_at"])
    subject = {"subject_user": user.username, "scim_id": str(scim_user.pk)}
    if changed:
        _event("scim.user_updated", connection, request, changed=changed, **subject)
    if activity_changed:
        action = "scim.user_reactivated" if user.is_active else "scim.user_deactivated"
        _event(action, connection, request, **subject)


def delete_user(connection: ScimConnection, resource_id: str, request: HttpRequest) -> None:
    """The user is deactivated, leaves the SCIM groups and is no longer a SCIM resource.
    The broker account and its grants are kept (revoke them with `revokegrants --user`),
    so the audit trail keeps naming someone and nothing is revoked upstream unasked."""
    with transaction.atomic():
        scim_user = user_of(connection, resource_id, lock=True)
        user = scim_user.user
        was_active = user.is_active
        user.is_active = False
        user.save(update_fields=["is_active"])
        left = list(user.groups.filter(scim__isnull=False))
        user.groups.remove(*left)
        subject = {"subject_user": user.username, "scim_id": str(scim_user.pk)}
        scim_user.delete()
        if was_active:
            _event("scim.user_deactivated", connection, request, **subject)
        groups = sorted(group.name for group in left)
        _event("scim.user_deleted", connection, request, left_groups=groups, **subject)


# -- groups ------------------------------------------------------------------------------


def group_of(connection: ScimConnection, resource_id: str, *, lock: bool = False) -> ScimGroup:
    rows = ScimGroup.objects.select_related("group").filter(connection=connection)
    if lock:
        rows = rows.select_for_update()
    found = rows.filter(pk=_uuid(resource_id, "group")).first()
    if found is None:
        raise _not_found("group")
    return found


def _group_name(name: str, but: Group | None = None) -> str:
    if name == AUDITOR_GROUP:
        raise invalid_value(
            f"The group name {AUDITOR_GROUP!r} is reserved: auditors come from "
            "BROKER_OIDC_AUDITOR_GROUPS."
        )
    taken = ScimGroup.objects.filter(group__name=name)
    if but is not None:
        taken = taken.exclude(group=but)
    if taken.exists() or (but is not None and Group.objects.filter(name=name).exists()):
        raise ScimError(409, f"The group {name!r} already exists.", "uniqueness")
    return name


def create_group(
    connection: ScimConnection,
    name: str,
    external_id: str,
    member_ids: set[str],
    request: HttpRequest,
) -> ScimGroup:
    """A group of this name that single sign-on made (from the groups claim) is adopted:
    the access rules naming it keep applying, now to its SCIM members too."""
    try:
        with transaction.atomic():
            group, _ = Group.objects.get_or_create(name=_group_name(name))
            scim_group = ScimGroup.objects.create(
                group=group, connection=connection, external_id=external_id
            )
            _event("scim.group_created", connection, request, group=name)
            _set_members(connection, scim_group, member_ids, request)
    except IntegrityError:
        raise ScimError(409, f"The group {name!r} already exists.", "uniqueness") from None
    return scim_group


def update_group(
    connection: ScimConnection,
    resource_id: str,
    request: HttpRequest,
    *,
    replacement: tuple[str, str, set[str]] | None = None,
    operations: list[patch.Operation] | None = None,
) -> ScimGroup:
    """PUT (`replacement`: name, externalId, members) or PATCH (`operations`) of a group."""
    try:
        with transaction.atomic():
            scim_group = group_of(connection, resource_id, lock=True)
            group = scim_group.group
            if replacement is not None:
                name, external_id, members = replacement
            else:
                members, changes = patch.patched_members(_member_ids(scim_group), operations or [])
                name = changes.get("displayName", group.name)
                external_id = changes.get("externalId", scim_group.external_id)
            if name != group.name:
                old = group.name
                group.name = _group_name(name, but=group)
                group.save(update_fields=["name"])
                _event("scim.group_renamed", connection, request, group=name, previous=old)
            scim_group.external_id = external_id
            scim_group.save(update_fields=["external_id", "updated_at"])
            _set_members(connection, scim_group, members, request)
    except IntegrityError:
        raise ScimError(409, "The group name is already taken.", "uniqueness") from None
    return scim_group


def _member_ids(scim_group: ScimGroup) -> set[str]:
    members = ScimUser.objects.filter(user__groups=scim_group.group)
    return {str(pk) for pk in members.values_list("pk", flat=True)}


def _set_members(
    connection: ScimConnection, scim_group: ScimGroup, wanted: set[str], request: HttpRequest
) -> None:
    """The group's SCIM members become `wanted` (SCIM user ids of this connection); members
    SCIM did not make are left alone. Leaving takes a `group:NAME` rule's rights away for
    every request after the commit."""
    ids = set()
    for value in wanted:
        try:
            ids.add(uuid.UUID(value))
        except ValueError:
            raise invalid_value(f"No user {value[:60]!r} to make a member.") from None
    found = {
        row.pk: row.user
        for row in ScimUser.objects.select_related("user").filter(connection=connection, pk__in=ids)
    }
    missing = ids - set(found)
    if missing:
        raise invalid_value(f"No user {str(sorted(missing)[0])!r} to make a member.")
    group = scim_group.group
    current = {
        row.pk: row.user
        for row in ScimUser.objects.select_related("user").filter(user__groups=group)
    }
    added = [found[pk] for pk in sorted(set(found) - set(current))]
    removed = [current[pk] for pk in sorted(set(current) - set(found))]
    group.user_set.add(*added)
    group.user_set.remove(*removed)
    for user in added:
        _event("scim.group_member_added", connection, request, subject_user=user.username,
               group=group.name)  # fmt: skip
    for user in removed:
        _event("scim.group_member_removed", connection, request, subject_user=user.username,
               group=group.name)  # fmt: skip


def delete_group(connection: ScimConnection, resource_id: str, request: HttpRequest) -> None:
    """Its SCIM members leave it and it is no longer a SCIM resource. The Django group stays:
    deleting it would delete the access rules that name it with it."""
    with transaction.atomic():
        scim_group = group_of(connection, resource_id, lock=True)
        _set_members(connection, scim_group, set(), request)
        name = scim_group.group.name
        scim_group.delete()
        _event("scim.group_deleted", connection, request, group=name)
