"""Creates a service client for the internal API: with a secret (shown once) or a key."""

import json
import secrets
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils.text import slugify

from broker.models import ServiceClient
from broker.service_identity import service_keys, service_secrets


class Command(BaseCommand):
    help = (
        "Create a service client. Without options it gets a client secret (printed once); "
        "with --public-key or --certificate it authenticates with private_key_jwt."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("name")
        key = parser.add_mutually_exclusive_group()
        key.add_argument("--public-key", type=Path, metavar="PEM_FILE", help="PEM or JWK")
        key.add_argument("--certificate", type=Path, metavar="PEM_FILE")
        parser.add_argument(
            "--subject-audience",
            action="append",
            default=[],
            metavar="AUD",
            help="the `aud` of user tokens it may exchange (repeatable): tokens the IdP "
            "issued to this service (its client id there), never the broker's own",
        )
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        key_file: Path | None = options["public_key"] or options["certificate"]
        try:
            key_text = key_file.read_text() if key_file else None
        except OSError as exc:
            raise CommandError(f"{key_file}: {exc.strerror}") from None
        client_id = f"{slugify(options['name'])[:40] or 'service'}-{secrets.token_hex(4)}"
        audiences = list(dict.fromkeys(a for a in options["subject_audience"] if a))
        result: dict[str, Any] = {"client_id": client_id, "name": options["name"]}
        if audiences:
            result["subject_audiences"] = audiences
        try:
            with transaction.atomic():
                service = ServiceClient.objects.create(
                    client_id=client_id, name=options["name"], subject_audiences=audiences
                )
                if options["certificate"]:
                    key = service_keys.register_key(service, certificate=key_text)
                    result.update(auth_method="private_key_jwt", kid=key.kid, x5t_s256=key.x5t_s256)
                elif options["public_key"]:
                    key = service_keys.register_key(service, public_key=key_text)
                    result.update(auth_method="private_key_jwt", kid=key.kid)
                else:
                    result.update(
                        auth_method="client_secret_basic",
                        client_secret=service_secrets.new_secret(service),
                    )
        except service_keys.ServiceKeyError as exc:
            raise CommandError(str(exc)) from None
        except ValidationError as exc:
            raise CommandError(f"--subject-audience: {' '.join(exc.messages)}") from None
        if options["json"]:
            self.stdout.write(json.dumps(result))
            return
        self.stdout.write(f"client_id: {client_id}")
        if "client_secret" in result:
            self.stdout.write(f"client_secret: {result['client_secret']}")
            self.stdout.write("The secret is shown only now; the broker keeps only its digest.")
        else:
            self.stdout.write(f"kid: {result['kid']}")
            if result.get("x5t_s256"):
                self.stdout.write(f"x5t#S256: {result['x5t_s256']}")
