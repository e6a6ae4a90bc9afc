"""Rows for tests, made directly in the database with sealed secrets."""

from __future__ import annotations

from typing import Any

from broker.models import AccessRule, Grant, ProviderApp, ServiceClient


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
    user, app, n: int = 0, *, access: str | None = None, refresh: str | None = None, **kw: Any
) -> Grant:
    grant = Grant(
        user=user,
        provider_app=app,
        external_account_id=f"acct-{n}",
        account_name=f"Account {n}",
        scopes=["read"],
        **kw,
    )
    grant.seal("access_token", access if access is not None else f"access-{app.slug}-{n}")
    grant.seal("refresh_token", refresh if refresh is not None else f"refresh-{app.slug}-{n}")
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
