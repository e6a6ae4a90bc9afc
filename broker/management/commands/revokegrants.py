"""Bulk revocation for offboarding and incidents: creates a job and runs or enqueues it."""

import json
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from broker.revocation.bulk import CriteriaError, create_job, enqueue_job, run_job


class Command(BaseCommand):
    help = (
        "Revoke every live grant of a user, provider app or service (or all of them), locally "
        "at once and at the provider where it has a revocation endpoint."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument("--user", help="broker username")
        which.add_argument("--provider", help="provider app slug")
        which.add_argument("--service", help="service client id")
        which.add_argument("--all", action="store_true", help="every grant")
        parser.add_argument("--reason", required=True)
        parser.add_argument("--wait", action="store_true", help="run here instead of a worker")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        criteria: dict[str, Any] = (
            {"all": True}
            if options["all"]
            else {k: options[k] for k in ("user", "provider", "service") if options[k]}
        )
        try:
            with transaction.atomic():
                job = create_job(criteria, reason=options["reason"], requested_by="manage.py")
                if not options["wait"]:
                    enqueue_job(job)
        except CriteriaError as exc:
            raise CommandError(str(exc)) from None
        if options["wait"]:
            job = run_job(job.pk) or job
        result = {
            "job": str(job.pk),
            "status": job.status,
            "total": job.total,
            "revoked": job.done,
            "failed": job.failed,
        }
        if options["json"]:
            self.stdout.write(json.dumps(result))
        else:
            self.stdout.write(
                f"job {result['job']}: {result['status']}, {result['revoked']} of "
                f"{result['total']} revoked, {result['failed']} failed"
            )
