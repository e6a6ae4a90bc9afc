"""Disables a service client; its broker tokens stop working at once."""

import json
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from broker.audit import trail
from broker.models import ServiceClient
from broker.service_identity import tokens


class Command(BaseCommand):
    help = "Disable a service client: no new tokens, and its current broker tokens die."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("client_id")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        service = ServiceClient.objects.filter(client_id=options["client_id"]).first()
        if service is None:
            raise CommandError(f"no service client {options['client_id']!r}")
        tokens.disable_service(service)
        trail.record(
            "admin.change",
            actor_type=trail.ActorType.ADMIN,
            actor="manage.py",
            service=service.client_id,
            change="service disabled",
        )
        if options["json"]:
            self.stdout.write(json.dumps({"client_id": service.client_id, "enabled": False}))
        else:
            self.stdout.write(f"{service.client_id}: disabled")
