"""Registers another public key or certificate for a service (key rollover)."""

import json
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from broker.models import ServiceClient
from broker.service_identity import service_keys


class Command(BaseCommand):
    help = "Register another public key (PEM or JWK) or X.509 certificate for a service client."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("client_id")
        key = parser.add_mutually_exclusive_group(required=True)
        key.add_argument("--public-key", type=Path, metavar="PEM_FILE")
        key.add_argument("--certificate", type=Path, metavar="PEM_FILE")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        service = ServiceClient.objects.filter(client_id=options["client_id"]).first()
        if service is None:
            raise CommandError(f"no service client {options['client_id']!r}")
        path: Path = options["public_key"] or options["certificate"]
        try:
            text = path.read_text()
        except OSError as exc:
            raise CommandError(f"{path}: {exc.strerror}") from None
        try:
            if options["certificate"]:
                key = service_keys.register_key(service, certificate=text)
            else:
                key = service_keys.register_key(service, public_key=text)
        except service_keys.ServiceKeyError as exc:
            raise CommandError(str(exc)) from None
        result = {"client_id": service.client_id, "kid": key.kid, "x5t_s256": key.x5t_s256}
        if options["json"]:
            self.stdout.write(json.dumps(result))
        else:
            self.stdout.write(f"kid: {key.kid}")
            if key.x5t_s256:
                self.stdout.write(f"x5t#S256: {key.x5t_s256}")
