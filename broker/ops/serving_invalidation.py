"""Every model save or delete that changes what the internal API may serve moves the serving
versions (broker.infra.serving_versions), so the per-process caches of the API drop their
copies at once: grants (one grant's scope), and access rules, users, group memberships,
groups, provider apps and services (the RULES scope).

Signals cover `save()`, `delete()` (cascades included) and `user.groups.add/remove/...`;
code that changes these rows with `QuerySet.update()` brackets the change itself
(`serving_versions.writing`), as the refresh engine does. Connected in BrokerConfig.ready.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group
from django.db.models import Model
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_delete, pre_save

from accounts.models import User
from broker.infra import serving_versions
from broker.models import AccessRule, Grant, ProviderApp, ServiceClient

# The attribute a row being written carries from its pre_ to its post_ signal.
WRITER_ATTRIBUTE = "_serving_writer"
# A user's last_login (every sign-in) and the like change nothing the API serves.
USER_FIELDS_SERVED = frozenset({"is_active", "username"})


def _scopes(instance: Model) -> tuple[str, ...]:
    if isinstance(instance, Grant):
        return (serving_versions.grant_scope(instance.pk),)
    return (serving_versions.RULES,)


def _before(sender: type[Model], instance: Model, **kwargs: Any) -> None:
    update_fields = kwargs.get("update_fields")
    if sender is User and update_fields is not None and not (USER_FIELDS_SERVED & update_fields):
        return
    if isinstance(instance, Grant) and instance._state.adding:
        return  # nothing can have cached a grant before it exists
    writer = serving_versions.begin_write(*_scopes(instance))
    setattr(instance, WRITER_ATTRIBUTE, writer)


def _after(sender: type[Model], instance: Model, **kwargs: Any) -> None:
    writer = instance.__dict__.pop(WRITER_ATTRIBUTE, None)
    if writer is not None:
        serving_versions.end_after_commit(writer, *_scopes(instance))


def _memberships(sender: type[Model], instance: Model, action: str, **kwargs: Any) -> None:
    if action.startswith("pre_"):
        _before(sender, instance)
    else:
        _after(sender, instance)


def connect() -> None:
    for model in (Grant, AccessRule, User, Group, ProviderApp, ServiceClient):
        uid = f"serving-{model._meta.label}"
        pre_save.connect(_before, sender=model, dispatch_uid=uid)
        post_save.connect(_after, sender=model, dispatch_uid=uid)
        pre_delete.connect(_before, sender=model, dispatch_uid=uid)
        post_delete.connect(_after, sender=model, dispatch_uid=uid)
    m2m_changed.connect(_memberships, sender=User.groups.through, dispatch_uid="serving-groups")
