"""Issues the bearer token an IdP (Okta, Entra ID) uses for SCIM provisioning, one per
connection NAME. Run again for the same NAME to rotate: the new token works at once and the
previous one stops at once (set the new one in the IdP right after)."""

import json
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from accounts.models import ScimConnection
from accounts.scim import tokens
from broker.audit import trail


class Command(BaseCommand):
    help = "Issue (or rotate) the SCIM bearer token of an IdP connection; shown once."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("name", help="the IdP connection, e.g. okta or entra")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        name = options["name"].strip()
        max_length = ScimConnection._meta.get_field("name").max_length or 64
        if not name or len(name) > max_length:
            raise CommandError(f"NAME must be 1 to {max_length} characters")
        with transaction.atomic():
            connection, token, created = tokens.issue(name)
            trail.record(
                "scim.token_issued" if created else "scim.token_rotated",
                actor_type=trail.ActorType.ADMIN,
                actor="manage.py",
                scim_connection=name,
                token_last4=connection.token_last4,
            )
        if options["json"]:
            self.stdout.write(json.dumps({"name": connection.name, "token": token}))
        else:
            verb = "Issued" if created else "Rotated (the previous token no longer works)"
            self.stdout.write(f"{verb} the SCIM token of {connection.name!r}; shown only once:")
            self.stdout.write(token)
