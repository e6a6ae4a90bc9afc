"""The provider catalog: what each kind of provider app speaks, as data.

Flows, the refresh engine and revocation read these entries instead of branching on kind
names, so a new provider that behaves like an existing kind needs no code. Endpoint
templates may use `{base_url}` (Data Center apps); every endpoint can be overridden per app.
`api` is the origin (and path prefix) the proxy forwards a service's calls to; `account` is
the provider's page where the user sees and removes the apps they authorized (linked from
the broker's Disconnect page), a page for people, never called by the broker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

# "api_token": no OAuth at all; the user (or an admin) stores an email and an API token
# that the proxy sends as HTTP Basic auth (Atlassian Cloud's API tokens).
Protocol = Literal["oauth2", "oauth1", "api_token"]
TokenEncoding = Literal["json", "form", "query"]


@dataclass(frozen=True)
class ProviderKind:
    name: str
    label: str
    protocol: Protocol
    endpoints: Mapping[str, str]
    requires_base_url: bool = False
    # OAuth 2.0 token requests: Atlassian Cloud wants a JSON body, Data Center the query string.
    token_encoding: TokenEncoding = "form"
    scope_separator: str = " "
    extra_authorize_params: Mapping[str, str] = field(default_factory=dict)
    # OAuth 2.0 consents always send a PKCE S256 challenge (RFC 7636; RFC 9700 2.1.1): it
    # stops a stolen or injected code from being redeemed in another session, and a
    # provider that ignores it loses nothing. Only a kind whose provider refuses
    # authorization requests that carry one sets this.
    rejects_pkce: bool = False
    # Data Center rejects a refresh without the redirect_uri used for the code.
    refresh_sends_redirect_uri: bool = False
    rotating_refresh_tokens: bool = False
    # Used when a token response has no expires_in.
    default_access_token_seconds: int = 3600
    refresh_token_inactivity_days: int | None = None
    refresh_token_absolute_days: int | None = None
    # How to read the identity document: our name -> candidate keys in the response.
    identity_fields: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    signature_methods: tuple[str, ...] = ()
    # Headers the proxy adds to requests that change something (not GET, HEAD, OPTIONS):
    # Data Center refuses form posts without `X-Atlassian-Token: no-check` (its XSRF check).
    proxy_write_headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def revocable_upstream(self) -> bool:
        return "revoke" in self.endpoints


GENERIC_IDENTITY = MappingProxyType(
    {
        "id": ("sub", "id", "account_id", "user_id", "key"),
        "name": ("name", "displayName", "display_name", "login", "username", "nickname"),
        "email": ("email", "emailAddress", "mail"),
    }
)
JIRA_MYSELF_IDENTITY = MappingProxyType(
    {
        "id": ("key", "accountId", "name"),
        "name": ("displayName", "name"),
        "email": ("emailAddress",),
    }
)

# What the Data Center kinds share, by protocol: endpoints under the app's base_url, and
# how the protocol behaves there.
DATA_CENTER: Mapping[Protocol, Mapping[str, Any]] = {
    "oauth2": {
        "endpoints": {
            "api": "{base_url}",
            "authorize": "{base_url}/rest/oauth2/latest/authorize",
            "token": "{base_url}/rest/oauth2/latest/token",
        },
        "token_encoding": "query",
        "refresh_sends_redirect_uri": True,
        "rotating_refresh_tokens": True,
        "refresh_token_inactivity_days": 90,
    },
    "oauth1": {
        "endpoints": {
            "api": "{base_url}",
            "request_token": "{base_url}/plugins/servlet/oauth/request-token",
            "authorize": "{base_url}/plugins/servlet/oauth/authorize",
            "access_token": "{base_url}/plugins/servlet/oauth/access-token",
            "account": "{base_url}/plugins/servlet/oauth/users/access-tokens",
        },
        "signature_methods": ("RSA-SHA1", "HMAC-SHA1"),
    },
}
# Product -> its label and where it says who the user is.
DATA_CENTER_PRODUCTS = {
    "jira": ("Jira", "{base_url}/rest/api/2/myself"),
    "confluence": ("Confluence", "{base_url}/rest/api/user/current"),
}
PROTOCOL_LABELS: Mapping[Protocol, str] = {"oauth2": "OAuth 2.0", "oauth1": "OAuth 1.0a"}

DC_WRITE_HEADERS = MappingProxyType({"X-Atlassian-Token": "no-check"})


def _data_center(product: str, protocol: Protocol) -> ProviderKind:
    label, identity = DATA_CENTER_PRODUCTS[product]
    options = dict(DATA_CENTER[protocol])
    endpoints = options.pop("endpoints")
    return ProviderKind(
        name=f"{product}-dc-{protocol}",
        label=f"{label} Data Center ({PROTOCOL_LABELS[protocol]})",
        protocol=protocol,
        endpoints=MappingProxyType({**endpoints, "identity": identity}),
        requires_base_url=True,
        identity_fields=JIRA_MYSELF_IDENTITY,
        proxy_write_headers=DC_WRITE_HEADERS,
        **options,
    )


KINDS: Mapping[str, ProviderKind] = MappingProxyType(
    {
        kind.name: kind
        for kind in (
            ProviderKind(
                name="atlassian",
                label="Atlassian Cloud (Jira, Confluence)",
                protocol="oauth2",
                endpoints=MappingProxyType(
                    {
                        "authorize": "https://auth.atlassian.com/authorize",
                        "token": "https://auth.atlassian.com/oauth/token",
                        "identity": "https://api.atlassian.com/me",
                        "resources": "https://api.atlassian.com/oauth/token/accessible-resources",
                        "api": "https://api.atlassian.com",
                        "account": "https://id.atlassian.com/manage-profile/apps",
                    }
                ),
                token_encoding="json",
                extra_authorize_params=MappingProxyType(
                    {"audience": "api.atlassian.com", "prompt": "consent"}
                ),
                # PKCE is not documented for Atlassian Cloud, but it ignores the parameters
                # (it never rejected them), so they are sent as to every provider; the
                # client secret is sent too.
                rotating_refresh_tokens=True,
                refresh_token_inactivity_days=90,
                refresh_token_absolute_days=365,
                identity_fields=MappingProxyType(
                    {"id": ("account_id",), "name": ("name", "nickname"), "email": ("email",)}
                ),
            ),
            *(
                _data_center(product, protocol)
                for protocol in PROTOCOL_LABELS
                for product in DATA_CENTER_PRODUCTS
            ),
            ProviderKind(
                # Atlassian Cloud API tokens: Basic auth with the account's email and a
                # token the user created at id.atlassian.com, expiring within a year. The
                # base URL is the site (https://acme.atlassian.net), the API's origin.
                name="atlassian-api-token",
                label="Atlassian Cloud API token (email + token)",
                protocol="api_token",
                endpoints=MappingProxyType(
                    {
                        "api": "{base_url}",
                        "identity": "{base_url}/rest/api/3/myself",
                        "account": "https://id.atlassian.com/manage-profile/security/api-tokens",
                    }
                ),
                requires_base_url=True,
                identity_fields=MappingProxyType(
                    {"id": ("accountId",), "name": ("displayName",), "email": ("emailAddress",)}
                ),
            ),
            ProviderKind(
                name="oauth2",
                label="Any OAuth 2.0 provider",
                protocol="oauth2",
                endpoints=MappingProxyType({}),
                identity_fields=GENERIC_IDENTITY,
            ),
            ProviderKind(
                name="oauth1",
                label="Any OAuth 1.0a provider",
                protocol="oauth1",
                endpoints=MappingProxyType({}),
                identity_fields=GENERIC_IDENTITY,
                signature_methods=("RSA-SHA1", "HMAC-SHA1"),
            ),
        )
    }
)

# The endpoints each protocol needs before an app can be used.
REQUIRED_ENDPOINTS: Mapping[Protocol, tuple[str, ...]] = MappingProxyType(
    {
        "oauth2": ("authorize", "token"),
        "oauth1": ("request_token", "authorize", "access_token"),
        "api_token": ("api", "identity"),
    }
)
ENDPOINT_NAMES: Mapping[Protocol, tuple[str, ...]] = MappingProxyType(
    {
        "oauth2": (
            "authorize",
            "token",
            "identity",
            "resources",
            "revoke",
            "issuer",
            "api",
            "account",
        ),
        "oauth1": ("request_token", "authorize", "access_token", "identity", "api", "account"),
        "api_token": ("api", "identity", "account"),
    }
)


def get_kind(name: str) -> ProviderKind:
    try:
        return KINDS[name]
    except KeyError:
        raise KeyError(f"unknown provider kind {name!r}; known: {', '.join(KINDS)}") from None


def resolve_endpoints(
    kind: ProviderKind, base_url: str, overrides: Mapping[str, str]
) -> dict[str, str]:
    """The kind's endpoint templates filled with the app's base URL, then its overrides."""
    base = base_url.rstrip("/")
    resolved = {name: template.format(base_url=base) for name, template in kind.endpoints.items()}
    resolved.update({name: url for name, url in overrides.items() if url})
    return resolved
