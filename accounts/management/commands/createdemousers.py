"""Creates a demo admin and a demo user for local development, once."""

import json
from argparse import ArgumentParser
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError


def credentials(value: str) -> tuple[str, str]:
    username, sep, password = value.partition(":")
    if not sep or not username or not password:
        raise CommandError(f"expected USERNAME:PASSWORD, got {value!r}")
    return username, password


class Command(BaseCommand):
    help = (
        "Create a demo admin and a demo user (development only: refuses when DEBUG is off). "
        "Existing users are left as they are, so `make dev` restarts sign nobody out."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--admin", default="admin:admin-broker")
        # `make dev` passes an empty --user: its people sign in with the sandbox IdP.
        parser.add_argument("--user", default="alice:alice-broker", help="'' for none")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEBUG:
            raise CommandError("demo users are for development; DEBUG is off")
        users = get_user_model()
        made = []
        for value, staff in ((options["admin"], True), (options["user"], False)):
            if not value:
                continue
            username, password = credentials(value)
            # Changing an existing user's password would end every session it has.
            user, created = users.objects.get_or_create(
                username=username, defaults={"is_staff": staff, "is_superuser": staff}
            )
            if created:
                user.set_password(password)
                user.save(update_fields=["password"])
            made.append({"username": username, "admin": staff, "created": created})
        if options["json"]:
            self.stdout.write(json.dumps({"users": made}))
        else:
            for u in made:
                role = "admin" if u["admin"] else "user"
                state = "created" if u["created"] else "exists, left as it is"
                self.stdout.write(f"{role} {u['username']}: {state}")
