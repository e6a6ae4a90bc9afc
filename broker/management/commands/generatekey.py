"""Prints a new encryption key entry for BROKER_ENCRYPTION_KEYS.

It runs without settings (manage.py starts it before reading them): with DEBUG off the
settings need the very key it makes.
"""

import json
from argparse import ArgumentParser
from datetime import date
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from broker.crypto.key_ring import KeyRing, KeyRingError


class Command(BaseCommand):
    help = "Print a new AES-256 key as kid:base64key, to put first in BROKER_ENCRYPTION_KEYS."
    requires_system_checks: list[str] = []  # they read the settings

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--kid", default=f"k{date.today():%Y%m%d}", help="key id (default: kYYYYMMDD)"
        )
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        entry = KeyRing.generate_entry(options["kid"])
        try:
            KeyRing.parse(entry)  # the kid is validated the same way the setting is
        except KeyRingError as exc:
            raise CommandError(f"--kid: {exc}") from None
        if options["json"]:
            kid, _, key = entry.partition(":")
            self.stdout.write(json.dumps({"kid": kid, "key": key, "entry": entry}))
        else:
            self.stdout.write(entry)
