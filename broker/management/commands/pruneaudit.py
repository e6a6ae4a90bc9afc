"""Deletes audit events older than BROKER_AUDIT_RETENTION_DAYS now (the beat does it daily)."""

import json
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from broker.audit.retention import PRUNE_BATCH, prune


class Command(BaseCommand):
    help = (
        "Delete audit events older than BROKER_AUDIT_RETENTION_DAYS (0: keep forever), the "
        "oldest first, in short batches: safe to run while the site serves traffic."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="count what would be deleted; delete nothing"
        )
        parser.add_argument("--batch-size", type=int, default=PRUNE_BATCH)
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1")
        report = prune(dry_run=options["dry_run"], batch=options["batch_size"])
        if options["json"]:
            self.stdout.write(json.dumps(report))
        elif report["cutoff"] is None:
            self.stdout.write("BROKER_AUDIT_RETENTION_DAYS is 0: audit events are kept forever.")
        elif report["dry_run"]:
            self.stdout.write(
                f"{report['expired']} audit events older than {report['cutoff']} "
                f"({report['retention_days']} days) would be deleted (dry run)."
            )
        else:
            self.stdout.write(
                f"{report['deleted']} audit events older than {report['cutoff']} "
                f"({report['retention_days']} days) deleted in {report['batches']} batches."
            )
