"""Reading the provider apps file (TOML) that `manage.py loadproviders` applies.

The whole file is validated before anything is written, and written in one transaction:
a mistake anywhere leaves the database as it was. Errors name the file, app and field.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import validate_slug
from django.db import transaction

from broker.catalog.provider_kinds import KINDS
from broker.models import ProviderApp
from broker.providers.app_validation import DEFAULT_SIGNATURE_METHOD, app_problems

APP_KEYS = {
    "kind",
    "name",
    "client_id",
    "client_secret",
    "consumer_key",
    "consumer_secret",
    "private_key",
    "signature_method",
    "base_url",
    "scopes",
    "endpoints",
    "enabled",
}


class ProvidersFileError(Exception):
    """The file cannot be applied; the message says where and why."""


@dataclass
class AppSpec:
    slug: str
    kind: str
    name: str
    client_id: str
    secret: str  # client secret (OAuth 2.0) or consumer secret (OAuth 1.0a HMAC)
    private_key: str
    signature_method: str
    base_url: str
    scopes: list[str]
    endpoints: dict[str, str] = field(default_factory=dict)
    enabled: bool = True


def resolve_secret(value: str, where: str, base_dir: Path) -> str:
    """`env:NAME` reads the environment, `file:PATH` a file; anything else is the literal."""
    if value.startswith("env:"):
        name = value[4:]
        if name not in os.environ:
            raise ProvidersFileError(f"{where}: environment variable {name} is not set")
        return os.environ[name]
    if value.startswith("file:"):
        path = Path(value[5:])
        if not path.is_absolute():
            path = base_dir / path
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise ProvidersFileError(f"{where}: cannot read {path}: {exc.strerror}") from None
    return value


def parse(path: Path) -> list[AppSpec]:
    try:
        document = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ProvidersFileError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProvidersFileError(f"{path}: not valid TOML: {exc}") from None
    unknown_top = set(document) - {"apps"}
    if unknown_top:
        raise ProvidersFileError(
            f"{path}: unknown top-level key(s): {', '.join(sorted(unknown_top))}"
        )
    apps = document.get("apps")
    if not isinstance(apps, dict) or not apps:
        raise ProvidersFileError(f"{path}: no [apps.<slug>] tables")
    return [parse_app(path, slug, table) for slug, table in apps.items()]


def parse_app(path: Path, slug: str, table: Any) -> AppSpec:
    where = f"{path}: app {slug!r}"
    if not isinstance(table, dict):
        raise ProvidersFileError(f"{where}: must be a table")
    try:
        validate_slug(slug)
    except ValidationError:
        raise ProvidersFileError(
            f"{where}: the slug may hold letters, digits, - and _ only"
        ) from None
    unknown = set(table) - APP_KEYS
    if unknown:
        raise ProvidersFileError(f"{where}: unknown field(s): {', '.join(sorted(unknown))}")

    def text(key: str, default: str = "") -> str:
        value = table.get(key, default)
        if not isinstance(value, str):
            raise ProvidersFileError(f"{where}: field {key!r} must be a string")
        return value

    kind_name = text("kind")
    if kind_name not in KINDS:
        raise ProvidersFileError(
            f"{where}: field 'kind' must be one of {', '.join(KINDS)} (got {kind_name!r})"
        )
    kind = KINDS[kind_name]
    base_dir = path.parent
    scopes = table.get("scopes", [])
    if not isinstance(scopes, list) or not all(isinstance(s, str) and s for s in scopes):
        raise ProvidersFileError(f"{where}: field 'scopes' must be a list of strings")
    enabled = table.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ProvidersFileError(f"{where}: field 'enabled' must be true or false")

    endpoints = table.get("endpoints", {})
    base_url = text("base_url")
    if kind.protocol == "api_token":
        client_fields = ("client_id", "client_secret", "consumer_key", "consumer_secret")
        for key in (*client_fields, "private_key", "signature_method"):
            if key in table:
                raise ProvidersFileError(
                    f"{where}: field {key!r} does not apply: API tokens are stored per grant"
                )
        client_id, secret, private_key, signature_method = "", "", "", ""
    elif kind.protocol == "oauth2":
        for key in ("consumer_key", "consumer_secret", "private_key", "signature_method"):
            if key in table:
                raise ProvidersFileError(f"{where}: field {key!r} is for OAuth 1.0a apps")
        client_id = text("client_id")
        secret = resolve_secret(text("client_secret"), f"{where}: field 'client_secret'", base_dir)
        private_key, signature_method = "", ""
    else:
        for key in ("client_id", "client_secret"):
            if key in table:
                raise ProvidersFileError(
                    f"{where}: field {key!r} is for OAuth 2.0 apps; use consumer_key"
                )
        client_id = text("consumer_key")
        signature_method = text("signature_method", DEFAULT_SIGNATURE_METHOD)
        private_key = resolve_secret(text("private_key"), f"{where}: field 'private_key'", base_dir)
        secret = resolve_secret(
            text("consumer_secret"), f"{where}: field 'consumer_secret'", base_dir
        )
    problems = app_problems(
        kind,
        client_id=client_id,
        base_url=base_url,
        endpoints=endpoints,
        signature_method=signature_method,
        secret=secret,
        private_key=private_key,
    )
    if problems:
        raise ProvidersFileError(f"{where}: {problems[0].message}")

    return AppSpec(
        slug=slug,
        kind=kind.name,
        name=text("name") or slug,
        client_id=client_id,
        secret=secret,
        private_key=private_key,
        signature_method=signature_method,
        base_url=base_url.rstrip("/"),
        scopes=scopes,
        endpoints=dict(endpoints),
        enabled=enabled,
    )


def apply(specs: list[AppSpec]) -> list[tuple[str, str]]:
    """Creates or updates each app; returns (slug, "created" | "updated" | "unchanged")."""
    results = []
    with transaction.atomic():
        for spec in specs:
            app = ProviderApp.objects.select_for_update().filter(slug=spec.slug).first()
            created = app is None
            if app is None:
                app = ProviderApp(slug=spec.slug)
            before = snapshot(app)
            app.kind = spec.kind
            app.name = spec.name
            app.client_id = spec.client_id
            app.signature_method = spec.signature_method
            app.base_url = spec.base_url
            app.scopes = spec.scopes
            app.endpoints = spec.endpoints
            app.enabled = spec.enabled
            secrets_changed = False
            for field_name, value in (
                ("client_secret", spec.secret),
                ("private_key", spec.private_key),
            ):
                if (app.unseal(field_name) or "") != value:
                    app.seal(field_name, value)
                    secrets_changed = True
            if created:
                status = "created"
            elif secrets_changed or snapshot(app) != before:
                status = "updated"
            else:
                status = "unchanged"
            if status != "unchanged":
                app.save()
            results.append((spec.slug, status))
    return results


def snapshot(app: ProviderApp) -> tuple[Any, ...]:
    return (
        app.kind,
        app.name,
        app.client_id,
        app.signature_method,
        app.base_url,
        app.scopes,
        app.endpoints,
        app.enabled,
    )
