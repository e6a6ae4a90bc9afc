"""Who a verified ID token names: the broker user linked to its (issuer, `sub`), created on
first sign-in, with groups and admin rights set from the IdP's groups at every sign-in."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from accounts.models import AUDITOR_GROUP, ExternalIdentity, ScimUser, User
from accounts.oidc_client import SignInRefused
from broker.audit import trail

# The longest user and group names Django's auth models hold.
NAME_MAX_LENGTH = 150


def idp_groups(claims: dict[str, Any]) -> list[str]:
    """The groups claim; none when absent (an IdP may send no groups at all, e.g. Google)."""
    name = settings.BROKER_OIDC_GROUPS_CLAIM
    if name not in claims and name in claims.get("_claim_names", {}):
        # Entra ID sends a link instead of the groups when a user has too many ("groups
        # overage"); following it needs Microsoft Graph rights the broker does not ask for.
        raise SignInRefused(
            "Too many groups to sign in",
            f"The sign-in service left out your groups (its `{name}` claim) because you are "
            'in too many of them (Entra ID\'s "groups overage"). An administrator must set '
            "the broker's app registration in Entra ID to send only the groups assigned to "
            'the application (Token configuration, groups claim: "Groups assigned to the '
            'application"), then you can sign in.',
        )
    value = claims.get(name, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(group, str) for group in value):
        raise SignInRefused(
            "Sign-in refused",
            f"The sign-in service's `{name}` claim is not a list of group names; tell your "
            "administrator (BROKER_OIDC_GROUPS_CLAIM).",
        )
    too_long = [group for group in value if len(group) > NAME_MAX_LENGTH]
    if too_long:
        raise SignInRefused("Sign-in refused", f"A group name is too long: {too_long[0][:40]}...")
    return sorted(set(value))


def username_from(claims: dict[str, Any]) -> str:
    claim = settings.BROKER_OIDC_USERNAME_CLAIM
    username = claims.get(claim) or claims.get("email")
    if not isinstance(username, str) or not username:
        raise SignInRefused(
            "Sign-in refused",
            f"The sign-in service sent neither `{claim}` nor `email` for you; an administrator "
            "must add one of them to the ID token (or set BROKER_OIDC_USERNAME_CLAIM).",
        )
    try:
        User.username_validator(username)
        if len(username) > NAME_MAX_LENGTH:
            raise ValidationError("too long")
    except ValidationError:
        raise SignInRefused(
            "Sign-in refused", f"Your user name {username[:60]!r} cannot be used here."
        ) from None
    return username


def sync_groups(user: User, groups: list[str]) -> None:
    """Django groups become exactly the IdP's (so `group:NAME` access rules follow it); the
    admin groups make a staff superuser, the auditor groups a member of `auditor`. An IdP
    group that happens to be named `auditor` grants nothing: only the auditor groups do."""
    admin = any(group in settings.BROKER_OIDC_ADMIN_GROUPS for group in groups)
    auditor = any(group in settings.BROKER_OIDC_AUDITOR_GROUPS for group in groups)
    names = {group for group in groups if group != AUDITOR_GROUP}
    if auditor:
        names.add(AUDITOR_GROUP)
    user.groups.set([Group.objects.get_or_create(name=name)[0] for name in sorted(names)])
    user.is_superuser = admin
    user.is_staff = admin or auditor
    user.save(update_fields=["is_superuser", "is_staff", "email"])


def signed_in_user(issuer: str, claims: dict[str, Any]) -> User:
    """The user for verified ID token claims, created and linked on first sign-in. Raises
    SignInRefused, with nothing written, for a deactivated user, a username already taken
    by another user (never merged silently), or unusable claims."""
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise SignInRefused("Sign-in refused", "The ID token names no subject (`sub`).")
    # An empty BROKER_OIDC_GROUPS_CLAIM (an IdP without groups, e.g. Google): groups and
    # admin rights are then managed in the broker's admin, never touched at sign-in.
    groups = idp_groups(claims) if settings.BROKER_OIDC_GROUPS_CLAIM else None
    email = claims.get("email")
    email = email if isinstance(email, str) else ""
    try:
        return _link_and_sync(issuer, subject, email, groups, claims)
    except IntegrityError:  # the same person's other first sign-in won the race
        raise SignInRefused(
            "Sign-in did not complete", "Another sign-in was under way; try again."
        ) from None


def _link_and_sync(
    issuer: str, subject: str, email: str, groups: list[str] | None, claims: dict[str, Any]
) -> User:
    with transaction.atomic():
        identity = (
            ExternalIdentity.objects.select_related("user")
            .select_for_update()
            .filter(issuer=issuer, subject=subject)
            .first()
        )
        if identity is None:
            username = username_from(claims)
            existing = User.objects.select_for_update().filter(username__iexact=username).first()
            if existing is None:
                user = User.objects.create_user(username, email=email)  # no usable password
            else:
                user = _provisioned_user(existing, username)
                trail.record(
                    "scim.user_linked",
                    actor_type=trail.ActorType.USER,
                    actor=user.username,
                    subject_user=user.username,
                    issuer=issuer,
                )
            ExternalIdentity.objects.create(user=user, issuer=issuer, subject=subject)
        else:
            user = identity.user
        if not user.is_active:
            raise _deactivated()
        user.email = email or user.email
        if groups is None:
            user.save(update_fields=["email"])
        else:
            sync_groups(user, groups)
    return user


def _deactivated() -> SignInRefused:
    return SignInRefused(
        "Your account is deactivated",
        "An administrator has deactivated your broker account; single sign-on "
        "does not reactivate it.",
    )


def _provisioned_user(existing: User, username: str) -> User:
    """The account named like the person, if SCIM made it for them and no single sign-on
    identity is linked to it yet: the IdP provisioned it under the username it signs them
    in with (DESIGN.md, "Identity, round two"). Any other account is never merged."""
    provisioned = ScimUser.objects.filter(user=existing).exists()
    if not provisioned or ExternalIdentity.objects.filter(user=existing).exists():
        raise SignInRefused(
            "This user name is taken",
            f"A broker account named {username!r} already exists and is not linked to "
            "your single sign-on identity. The broker never merges accounts on its "
            "own: an administrator must rename or delete the existing account first.",
        )
    return existing
