"""Creates or updates provider apps from a TOML file (see DESIGN.md for the format)."""

import json
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from broker import providers_file


class Command(BaseCommand):
    help = (
        "Create or update provider apps from a TOML file; nothing is applied if any app is invalid."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("file", type=Path)
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            results = providers_file.apply(providers_file.parse(options["file"]))
        except providers_file.ProvidersFileError as exc:
            raise CommandError(str(exc)) from None
        if options["json"]:
            self.stdout.write(json.dumps({"apps": [{"slug": s, "result": r} for s, r in results]}))
        else:
            for slug, result in results:
                self.stdout.write(f"{slug}: {result}")
