"""Re-encrypts every stored secret under the primary key, in batches, while the site runs."""

import json
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand

from broker.crypto.key_rotation import reencrypt_all


class Command(BaseCommand):
    help = (
        "Re-encrypt every token, secret and key under the first key of BROKER_ENCRYPTION_KEYS. "
        "Safe to run while the site serves traffic and to interrupt: run it again to finish."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--batch-size", type=int, default=500)
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        report = reencrypt_all(batch_size=options["batch_size"])
        if options["json"]:
            self.stdout.write(json.dumps(report))
            return
        for table, counts in report["tables"].items():
            self.stdout.write(
                f"{table}: {counts['reencrypted']} re-encrypted, "
                f"{counts['current']} already under {report['primary_kid']}, "
                f"{counts['raced']} changed meanwhile (already current)"
            )
        self.stdout.write(f"Done: every secret is under key {report['primary_kid']!r}.")
