"""Rows for tests, made directly in the database with sealed secrets: the one place tests
make provider apps, grants and services."""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

from django.utils import timezone

from broker.models import AccessRule, Grant, ProviderApp, ServiceClient
from broker.service_identity import service_secrets


def make_app(slug: str = "acme", *, revoke_url: str = "", secret: str = "app-secret-1", **kw: Any):
    endpoints = {
        "authorize": "https://provider.example/authorize",
        "token": "https://provider.example/token",
        **kw.pop("endpoints", {}),
    }
    if revoke_url:
        endpoints["revoke"] = revoke_url
    app = ProviderApp(
        slug=slug,
        kind=kw.pop("kind", "oauth2"),
        name=kw.pop("name", slug.title()),
        client_id=kw.pop("client_id", f"{slug}-client"),
        endpoints=endpoints,
        scopes=["read"],
        **kw,
    )
    app.seal("client_secret", secret)
    app.save()
    return app


def make_grant(
    user,
    app,
    n: int = 0,
    *,
    access: str | None = None,
    refresh: str | None = None,
    token_secret: str = "",
    **fields: Any,
) -> Grant:
    """An unsaved grant with sealed tokens; `fields` override the defaults. `refresh=""`
    stores no refresh token (OAuth 1.0a grants have none)."""
    values: dict[str, Any] = {
        "external_account_id": f"acct-{n}",
        "account_name": f"Account {n}",
        "scopes": ["read"],
        **fields,
    }
    grant = Grant(user=user, provider_app=app, **values)
    grant.seal("access_token", access if access is not None else f"access-{app.slug}-{n}")
    refresh = refresh if refresh is not None else f"refresh-{app.slug}-{n}"
    if refresh:
        grant.seal("refresh_token", refresh)
    if token_secret:
        grant.seal("token_secret", token_secret)
    return grant


def save_grant(*args: Any, **kw: Any) -> Grant:
    grant = make_grant(*args, **kw)
    grant.save()
    return grant


def make_service(
    client_id: str = "svc",
    *,
    webhook_url: str = "",
    webhook_secret: str = "",
    app: ProviderApp | None = None,
) -> ServiceClient:
    service = ServiceClient(client_id=client_id, name=client_id.title(), webhook_url=webhook_url)
    if webhook_secret:
        service.seal("webhook_secret", webhook_secret)
    service.save()
    if app is not None:
        AccessRule.objects.create(service=service, provider_app=app)
    return service


def consented_grant(user, app: ProviderApp, **fields: Any) -> Grant:
    """A saved grant as the consent flow leaves it: account, sites, unguessable tokens."""
    return save_grant(
        user,
        app,
        **{
            "external_account_id": f"acct-{user.username}-{app.slug}",
            "account_name": user.username.title(),
            "account_email": f"{user.username}@example.com",
            "scopes": list(app.scopes),
            "resources": [{"id": "cloud-1", "url": "https://acme.atlassian.net", "name": "acme"}],
            "access_expires_at": timezone.now() + timedelta(hours=1),
            "access": f"at-{secrets.token_hex(8)}",
            "refresh": f"rt-{secrets.token_hex(8)}",
            "token_secret": f"ts-{secrets.token_hex(8)}" if app.protocol == "oauth1" else "",
            **fields,
        },
    )


def service_and_secret(name: str = "reporting") -> tuple[ServiceClient, str]:
    """A saved service (unique client id) and its client secret."""
    service = ServiceClient.objects.create(
        client_id=f"{name}-{secrets.token_hex(4)}", name=name.title()
    )
    return service, service_secrets.new_secret(service)
