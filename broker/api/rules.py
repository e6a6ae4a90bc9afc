"""Access rules: what a service may reach. Nothing by default.

A rule names one provider app and grants, for all users or the members of one group:
the scopes the service may receive, and whether it may sign OAuth 1.0a requests and create
connect links, what it may call through the proxy (methods and path patterns), and
whether it gets raw tokens at all (`proxy_only`: no). Several matching rules add up. An
`on_behalf_of` rule serves a user's grants only to a service that presents that user's
token from the company IdP (token exchange, or `Broker-Subject-Token`), never to one that
merely names the user.

A grant no rule covers is invisible: the API answers exactly as if it did not exist. So are
the grants of a deactivated user (`is_active` false), to every service, until the user is
reactivated.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from django.db.models import Exists, OuterRef, Q, QuerySet

from accounts.models import User
from broker.catalog import proxy_paths
from broker.models import AccessRule, Grant, ProviderApp


@dataclass(frozen=True)
class Permission:
    scopes: frozenset[str]
    can_sign: bool
    can_create_connect_links: bool
    # Every matching rule is on-behalf-of: the user's own token is required.
    on_behalf_of_only: bool
    # Every matching rule is proxy-only: no raw token is handed out.
    proxy_only: bool = False
    # Each matching rule's (proxy methods, proxy path patterns); empty: anything.
    proxy_rules: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = ()

    def may_proxy(self, method: str, segments: list[str]) -> bool:
        """Some matching rule lets the service send this method to this path."""
        return any(
            proxy_paths.allowed(methods, patterns, method, segments)
            for methods, patterns in self.proxy_rules
        )


def rule_rows(service_id: uuid.UUID, app_id: uuid.UUID) -> list[AccessRule]:
    """The service's rules for the app: whole rows."""
    return list(AccessRule.objects.filter(service_id=service_id, provider_app_id=app_id))


def permission(service_id: uuid.UUID, app: ProviderApp, user: User) -> Permission | None:
    """What `service_id` may do with `user`'s grants of `app`, as the database says now;
    None when nothing."""
    if not app.enabled or not user.is_active:
        return None
    rules = rule_rows(service_id, app.pk)
    group_ids = {r.users_group_id for r in rules if r.users_group_id is not None}
    member_of: set[int] = set()
    if group_ids:
        member_of = set(user.groups.filter(id__in=group_ids).values_list("id", flat=True))
    matching = [r for r in rules if r.users_group_id is None or r.users_group_id in member_of]
    if not matching:
        return None
    scopes: set[str] = set()
    for rule in matching:
        scopes.update(rule.scopes or app.scopes)
    return Permission(
        scopes=frozenset(scopes),
        can_sign=any(r.can_sign for r in matching),
        can_create_connect_links=any(r.can_create_connect_links for r in matching),
        on_behalf_of_only=all(r.on_behalf_of for r in matching),
        proxy_only=all(r.proxy_only for r in matching),
        proxy_rules=tuple(
            (tuple(r.proxy_methods or ()), tuple(r.proxy_paths or ())) for r in matching
        ),
    )


def visible_grants(service_id: uuid.UUID) -> QuerySet[Grant]:
    """Every grant some rule of the service covers (enabled apps, active users), in one
    query."""
    covering_rule = AccessRule.objects.filter(
        service_id=service_id, provider_app=OuterRef("provider_app")
    ).filter(Q(users_group__isnull=True) | Q(users_group__user=OuterRef("user")))
    return Grant.objects.filter(
        Exists(covering_rule), provider_app__enabled=True, user__is_active=True
    )


def service_capabilities(service_id: uuid.UUID) -> tuple[bool, bool]:
    """(any rule may sign, any rule may create connect links): decides the API scopes."""
    rules = AccessRule.objects.filter(service_id=service_id)
    return (
        rules.filter(can_sign=True).exists(),
        rules.filter(can_create_connect_links=True).exists(),
    )
