"""Admin roles: the "auditor" group reads every broker model in the admin and changes nothing.

The group is created by a data migration and its view permissions are re-synced after
every `migrate` (post_migrate), so models added by later migrations are readable too.
"""

from __future__ import annotations

from typing import Any

from accounts.models import AUDITOR_GROUP


def sync_auditor_group(apps: Any, using: str = "default") -> None:
    """Gives the auditor group exactly the broker app's view permissions (nothing else)."""
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.using(using).get_or_create(name=AUDITOR_GROUP)
    view = Permission.objects.using(using).filter(
        content_type__app_label="broker", codename__startswith="view_"
    )
    group.permissions.set(list(view))


def sync_after_migrate(sender: Any, using: str = "default", **kwargs: Any) -> None:
    from django.apps import apps as global_apps

    sync_auditor_group(kwargs.get("apps") or global_apps, using=using)
