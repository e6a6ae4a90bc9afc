"""Creates or updates provider apps from a TOML file (see DESIGN.md for the format)."""

import json
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from broker.models import ProviderApp
from broker.providers import providers_file
from broker.providers.oauth1_consumer import public_key_pem


class Command(BaseCommand):
    help = (
        "Create or update provider apps from a TOML file; nothing is applied if any app is invalid."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "file", type=Path, nargs="?", help="the TOML file (default: BROKER_PROVIDERS_FILE)"
        )
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        path = options["file"] or (
            Path(settings.BROKER_PROVIDERS_FILE) if settings.BROKER_PROVIDERS_FILE else None
        )
        if path is None:
            raise CommandError("give the providers file, or set BROKER_PROVIDERS_FILE")
        try:
            results = providers_file.apply(providers_file.parse(path))
        except providers_file.ProvidersFileError as exc:
            raise CommandError(str(exc)) from None
        # The public key of each OAuth 1.0a RSA-SHA1 app: what a Jira or Confluence admin
        # pastes into the application link. It is not a secret.
        public_keys = {
            app.slug: pem
            for app in ProviderApp.objects.filter(slug__in=[slug for slug, _ in results])
            if (pem := public_key_pem(app))
        }
        if options["json"]:
            apps = []
            for slug, result in results:
                entry = {"slug": slug, "result": result}
                if slug in public_keys:
                    entry["public_key"] = public_keys[slug]
                apps.append(entry)
            self.stdout.write(json.dumps({"apps": apps}))
        else:
            for slug, result in results:
                self.stdout.write(f"{slug}: {result}")
                if slug in public_keys:
                    self.stdout.write(
                        f"{slug}: public key for the application link (RSA-SHA1):\n"
                        + public_keys[slug].rstrip("\n")
                    )
