"""Who a new access token belongs to, and which sites it reaches.

Right after a code exchange the broker reads the provider's identity document (Atlassian:
`/me`) and, where the kind has one, its resources list (Atlassian: accessible-resources).
Both go through `get_json`, the one place with the Bearer header (RFC 6750 section 2.1)
and the provider deadline. An API token's account (Basic auth) is read the same way
(broker.providers.api_token_auth).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import requests
from authlib.integrations.requests_client import OAuth2Auth

from broker.infra.outbound_http import provider_session
from broker.models import ProviderApp


class AccountLookupError(Exception):
    """The identity or resources could not be read; `transient` says whether to try again."""

    def __init__(self, message: str, *, transient: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.status = status  # the provider's HTTP status, when it answered


@dataclass(frozen=True)
class Account:
    external_id: str
    name: str
    email: str
    # Atlassian sites: every one the token reaches, never a single "picked" one.
    resources: list[dict[str, Any]] = field(default_factory=list)


def get_json(url: str, access_token: str) -> Any:
    return get_json_with(url, OAuth2Auth({"access_token": access_token, "token_type": "Bearer"}))


def get_json_with(url: str, auth: requests.auth.AuthBase) -> Any:
    try:
        with provider_session() as session:
            response = session.get(url, auth=auth, headers={"Accept": "application/json"})
    except requests.RequestException as exc:
        raise AccountLookupError(f"{url}: {type(exc).__name__}", transient=True) from None
    status = response.status_code
    if status >= 500 or status == 429:
        raise AccountLookupError(f"{url}: HTTP {status}", transient=True, status=status)
    if status >= 400:
        raise AccountLookupError(f"{url}: HTTP {status}", transient=False, status=status)
    try:
        return response.json()
    except ValueError:
        raise AccountLookupError(f"{url}: not JSON", transient=False) from None


def first_value(document: dict[str, Any], candidates: tuple[str, ...]) -> str:
    for key in candidates:
        value = document.get(key)
        if value not in (None, ""):
            return str(value)
    return ""


def sites(document: Any) -> list[dict[str, Any]]:
    """Atlassian accessible-resources: `[{"id", "name", "url", "scopes", "avatarUrl"}]`."""
    if not isinstance(document, list):
        raise AccountLookupError("the resources list is not a JSON list", transient=False)
    return [
        {
            "id": str(item["id"]),
            "url": str(item.get("url") or ""),
            "name": str(item.get("name") or ""),
            "scopes": [str(scope) for scope in item.get("scopes") or []],
        }
        for item in document
        if isinstance(item, dict) and item.get("id")
    ]


def identity_from(app: ProviderApp, document: Any) -> Account:
    """Reads an identity document with the catalog's field names (first non-empty wins)."""
    if not isinstance(document, dict):
        raise AccountLookupError("the identity document is not a JSON object", transient=False)
    fields = app.catalog_entry.identity_fields
    external_id = first_value(document, fields.get("id", ()))
    if not external_id:
        raise AccountLookupError("the identity document has no account id", transient=False)
    return Account(
        external_id=external_id[:255],
        name=first_value(document, fields.get("name", ()))[:255],
        email=first_value(document, fields.get("email", ()))[:255],
    )


def look_up_account(app: ProviderApp, access_token: str) -> Account:
    identity_url = app.endpoint("identity")
    if not identity_url:
        raise AccountLookupError(f"app {app.slug} has no identity endpoint", transient=False)
    account = identity_from(app, get_json(identity_url, access_token))
    resources_url = app.endpoint("resources")
    if resources_url:
        account = replace(account, resources=sites(get_json(resources_url, access_token)))
    return account
