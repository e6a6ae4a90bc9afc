"""Why a grant gives no token, as the API's error: shared by the token views and the proxy."""

from __future__ import annotations

from typing import Any

from broker.api.errors import ApiError, not_visible
from broker.models import Grant
from broker.refresh import on_demand

# What the refresh engine may raise instead of giving a token.
REFRESH_REFUSALS = (
    Grant.DoesNotExist,
    on_demand.UserDeactivated,
    on_demand.ReconnectRequired,
    on_demand.ProviderUnavailable,
)


def refresh_refusal(grant: Grant, exc: Exception, **concerning: Any) -> ApiError:
    """One of REFRESH_REFUSALS as the API's error; `concerning` goes to the audit."""
    concerning = {"grant_id": grant.pk, "provider": grant.provider_app.slug, **concerning}
    if isinstance(exc, on_demand.ReconnectRequired):
        return ApiError(
            409,
            "reconnect_required",
            "the grant is no longer valid at the provider; the user must connect again",
            **concerning,
        )
    if isinstance(exc, on_demand.ProviderUnavailable):
        return ApiError(
            503,
            "temporarily_unavailable",
            "the provider is failing and no valid token is left; retry later",
            {"Retry-After": str(max(1, int(exc.retry_after)))},
            **concerning,
        )
    return not_visible(**concerning)  # gone, or its user deactivated


def require_live(grant: Grant, **concerning: Any) -> None:
    """A revoked or dead grant is 409 `reconnect_required`, before any token work."""
    if grant.status == Grant.Status.ACTIVE:
        return
    description = (
        "the grant was revoked; the user must connect again"
        if grant.status == Grant.Status.REVOKED
        else "the grant is no longer valid at the provider; the user must connect again"
    )
    raise ApiError(
        409,
        "reconnect_required",
        description,
        **{"grant_id": grant.pk, "provider": grant.provider_app.slug, **concerning},
    )
