"""Deactivates users (offboarding): no token, signature or proxied call is served for their
grants from the moment it commits, and their grants are no longer refreshed. Their grants
are kept, so reactivating a user restores access; revoke them with `revokegrants --user`."""

import json
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from accounts.models import User
from broker.audit import trail


class Command(BaseCommand):
    help = "Deactivate users by username: their grants are served to no one from now on."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("usernames", nargs="+")
        parser.add_argument("--reason", required=True)
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        usernames = sorted(set(options["usernames"]))
        known = set(User.objects.filter(username__in=usernames).values_list("username", flat=True))
        unknown = [name for name in usernames if name not in known]
        if unknown:
            raise CommandError(f"no such users: {', '.join(unknown)} (nothing was changed)")
        with transaction.atomic():
            changed = sorted(
                User.objects.select_for_update()
                .filter(username__in=usernames, is_active=True)
                .values_list("username", flat=True)
            )
            User.objects.filter(username__in=changed).update(is_active=False)
            for username in changed:
                trail.record(
                    "user.deactivated",
                    actor_type=trail.ActorType.ADMIN,
                    actor="manage.py",
                    subject_user=username,
                    reason=options["reason"],
                )
        if options["json"]:
            self.stdout.write(
                json.dumps(
                    {
                        "deactivated": changed,
                        "already_inactive": sorted(set(usernames) - set(changed)),
                    }
                )
            )
        else:
            for username in usernames:
                state = "deactivated" if username in changed else "already inactive"
                self.stdout.write(f"{username}: {state}")
