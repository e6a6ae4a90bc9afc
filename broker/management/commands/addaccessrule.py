"""Grants a service access to one provider app's grants (see broker.api.rules)."""

import json
from argparse import ArgumentParser
from typing import Any

from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError

from broker.audit import trail
from broker.catalog.proxy_paths import method_problem, pattern_problem
from broker.models import AccessRule, ProviderApp, ServiceClient


class Command(BaseCommand):
    help = (
        "Let a service get tokens of one provider app. No --scopes: the app's scopes; "
        "no --users: all users."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("client_id")
        parser.add_argument("--provider", required=True, metavar="SLUG")
        parser.add_argument("--scopes", help='space-separated, e.g. "read:me read:jira-work"')
        parser.add_argument("--users", default="all", help="all, or group:NAME")
        parser.add_argument("--sign", action="store_true", help="may sign OAuth 1.0a requests")
        parser.add_argument("--connect-links", action="store_true")
        parser.add_argument(
            "--on-behalf-of",
            action="store_true",
            help="served only with the signed-in user's token (token exchange), never by name",
        )
        parser.add_argument(
            "--proxy-only",
            action="store_true",
            help="never hand out the raw token or a signature: the proxy only",
        )
        parser.add_argument(
            "--proxy-methods",
            metavar="M,...",
            help="methods the service may send through the proxy, e.g. GET,POST (default: any)",
        )
        parser.add_argument(
            "--proxy-paths",
            action="append",
            default=[],
            metavar="PATTERN",
            help="a path the service may call through the proxy (repeatable; * one segment, "
            "** any), e.g. '/ex/jira/*/rest/api/3/**' (default: any)",
        )
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        service = ServiceClient.objects.filter(client_id=options["client_id"]).first()
        if service is None:
            raise CommandError(f"no service client {options['client_id']!r}")
        app = ProviderApp.objects.filter(slug=options["provider"]).first()
        if app is None:
            slugs = ", ".join(ProviderApp.objects.order_by("slug").values_list("slug", flat=True))
            raise CommandError(
                f"no provider app {options['provider']!r}; "
                + (
                    f"the apps are: {slugs}"
                    if slugs
                    else "none is loaded (manage.py loadproviders)"
                )
            )
        group = None
        users: str = options["users"]
        if users.startswith("group:") and users[len("group:") :]:
            group = Group.objects.filter(name=users[len("group:") :]).first()
            if group is None:
                raise CommandError(f"no group {users[len('group:') :]!r}")
        elif users != "all":
            raise CommandError("--users must be all or group:NAME")
        scopes = options["scopes"].split() if options["scopes"] is not None else []
        unknown = sorted(set(scopes) - set(app.scopes)) if app.scopes else []
        if unknown:
            raise CommandError(f"scopes not configured for {app.slug}: {' '.join(unknown)}")
        methods = [
            m.strip().upper() for m in (options["proxy_methods"] or "").split(",") if m.strip()
        ]
        if problems := [p for m in methods if (p := method_problem(m))]:
            raise CommandError(f"--proxy-methods: {'; '.join(problems)}")
        paths: list[str] = options["proxy_paths"]
        for pattern in paths:
            if problem := pattern_problem(pattern):
                raise CommandError(f"--proxy-paths: {problem}")
        rule, created = AccessRule.objects.update_or_create(
            service=service,
            provider_app=app,
            users_group=group,
            defaults={
                "scopes": scopes,
                "can_sign": options["sign"],
                "can_create_connect_links": options["connect_links"],
                "on_behalf_of": options["on_behalf_of"],
                "proxy_only": options["proxy_only"],
                "proxy_methods": methods,
                "proxy_paths": paths,
            },
        )
        trail.record(
            "admin.change",
            actor_type=trail.ActorType.ADMIN,
            actor="manage.py",
            service=service.client_id,
            provider=app.slug,
            scopes=scopes,
            change="access rule created" if created else "access rule updated",
            users=users,
            can_sign=rule.can_sign,
            can_create_connect_links=rule.can_create_connect_links,
            on_behalf_of=rule.on_behalf_of,
            proxy_only=rule.proxy_only,
            proxy_methods=rule.proxy_methods,
            proxy_paths=rule.proxy_paths,
        )
        result = {
            "client_id": service.client_id,
            "provider": app.slug,
            "scopes": rule.allowed_scopes(),
            "users": users,
            "sign": rule.can_sign,
            "connect_links": rule.can_create_connect_links,
            "on_behalf_of": rule.on_behalf_of,
            "proxy_only": rule.proxy_only,
            "proxy_methods": rule.proxy_methods,
            "proxy_paths": rule.proxy_paths,
            "created": created,
        }
        if options["json"]:
            self.stdout.write(json.dumps(result))
        else:
            verb = "created" if created else "updated"
            self.stdout.write(
                f"rule {verb}: {service.client_id} -> {app.slug} ({users}), "
                f"scopes: {' '.join(rule.allowed_scopes()) or '(none)'}"
            )
