"""What the broker answers, as typed values."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


def _moment(value: Any) -> datetime | None:
    """An ISO 8601 timestamp of the broker ("2026-01-02T03:04:05Z"), or None."""
    return datetime.fromisoformat(value) if isinstance(value, str) else None


@dataclass(frozen=True)
class Account:
    """The user's account at the provider."""

    id: str
    name: str
    email: str


def _account(body: dict[str, Any]) -> Account:
    account = body.get("account") or {}
    return Account(
        id=account.get("id", ""), name=account.get("name", ""), email=account.get("email", "")
    )


@dataclass(frozen=True)
class Grant:
    """A user's consent at one provider account, as this service may see it (no tokens)."""

    id: str
    user: str
    provider: str
    status: str  # active, reconnect_required or revoked
    reconnect_soon: bool  # the refresh token's absolute lifetime ends soon
    account: Account
    scopes: tuple[str, ...]
    resources: tuple[dict[str, Any], ...]
    access_expires_at: datetime | None
    last_used_at: datetime | None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Grant:
        return cls(
            id=body["id"],
            user=body["user"],
            provider=body["provider"],
            status=body["status"],
            reconnect_soon=bool(body.get("reconnect_soon")),
            account=_account(body),
            scopes=tuple(body.get("scopes") or ()),
            resources=tuple(body.get("resources") or ()),
            access_expires_at=_moment(body.get("access_expires_at")),
            last_used_at=_moment(body.get("last_used_at")),
        )


@dataclass(frozen=True)
class ProviderToken:
    """A user's provider access token (`POST /api/v1/access-token`).

    `expires_in` counts from when this value was handed out (a cached token is handed out
    with its remaining lifetime); `scopes` are the scopes the token really carries.
    """

    access_token: str = field(repr=False)
    expires_at: datetime | None
    expires_in: int | None
    scopes: tuple[str, ...]
    grant: str
    account: Account
    resources: tuple[dict[str, Any], ...]
    token_type: str = "Bearer"

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ProviderToken:
        return cls(
            access_token=body["access_token"],
            expires_at=_moment(body.get("expires_at")),
            expires_in=body.get("expires_in"),
            scopes=tuple(body.get("scopes") or ()),
            grant=body["grant"],
            account=_account(body),
            resources=tuple(body.get("resources") or ()),
            token_type=body.get("token_type", "Bearer"),
        )


@dataclass(frozen=True)
class ExchangedToken:
    """A user's provider access token from a token exchange (RFC 8693 2.2.1), for acting
    on behalf of the user whose IdP token was presented.

    `expires_in` counts from when this value was handed out; `scopes` are the scopes the
    token really carries."""

    access_token: str = field(repr=False)
    expires_in: int | None
    scopes: tuple[str, ...]
    issued_token_type: str = "urn:ietf:params:oauth:token-type:access_token"
    token_type: str = "Bearer"

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ExchangedToken:
        return cls(
            access_token=body["access_token"],
            expires_in=body.get("expires_in"),
            scopes=tuple(str(body.get("scope") or "").split()),
            issued_token_type=body.get("issued_token_type", cls.issued_token_type),
            token_type=body.get("token_type", "Bearer"),
        )


@dataclass(frozen=True)
class ConnectLink:
    """A single-use URL that sends one user through consent (`POST /api/v1/connect-links`)."""

    url: str
    expires_at: datetime | None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ConnectLink:
        return cls(url=body["url"], expires_at=_moment(body.get("expires_at")))
