"""Prints a new encryption key entry for BROKER_ENCRYPTION_KEYS."""

import json
from argparse import ArgumentParser
from datetime import date
from typing import Any

from django.core.management.base import BaseCommand

from broker.crypto.key_ring import KeyRing


class Command(BaseCommand):
    help = "Print a new AES-256 key as kid:base64key, to put first in BROKER_ENCRYPTION_KEYS."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--kid", default=f"k{date.today():%Y%m%d}", help="key id (default: kYYYYMMDD)"
        )
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        entry = KeyRing.generate_entry(options["kid"])
        KeyRing.parse(entry)  # the kid is validated the same way the setting is
        if options["json"]:
            kid, _, key = entry.partition(":")
            self.stdout.write(json.dumps({"kid": kid, "key": key, "entry": entry}))
        else:
            self.stdout.write(entry)
