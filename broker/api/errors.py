"""JSON errors of the internal API: `{"error": code, "error_description": text}`."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import JsonResponse

from broker.ops.error_pages import error_response


class ApiError(Exception):
    """Raised anywhere below a view; the view's wrapper turns it into the JSON error."""

    def __init__(
        self,
        status: int,
        error: str,
        description: str,
        headers: dict[str, str] | None = None,
        **audit: Any,
    ) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description
        self.headers = headers or {}
        # What the refusal concerned (grant_id, subject_user, provider, scopes): for the audit.
        self.audit = audit

    def response(self) -> JsonResponse:
        return error_response(self.status, self.error, self.description, self.headers)


# One body for "does not exist" and "exists but this service may not see it" (never reveal).
NOT_FOUND_DESCRIPTION = "no such grant, user or provider visible to this service"


def not_visible(**audit: Any) -> ApiError:
    return ApiError(404, "not_found", NOT_FOUND_DESCRIPTION, **audit)


def invalid_request(description: str) -> ApiError:
    return ApiError(400, "invalid_request", description)


def proxy_only(slug: str, **audit: Any) -> ApiError:
    """The service's rules let it reach `slug` only through the proxy: no raw token, no
    signature (either would let it call any path, past its proxy rules)."""
    return ApiError(
        403,
        "proxy_only",
        f"this service may use {slug!r} only through the proxy (/api/v1/proxy/{slug}/...); "
        "its access rules hand out no token or signature",
        provider=slug,
        **audit,
    )


def api_token_grant(**audit: Any) -> ApiError:
    """The refusal for a grant that holds an API token: such a token is never handed out, by
    /access-token, /sign or token exchange alike; only the proxy uses it."""
    return ApiError(
        400,
        "api_token_grant",
        "this grant holds an API token, which the broker never hands out: call the provider "
        "through the proxy, /api/v1/proxy/<provider>/<path>",
        **audit,
    )


def body_too_large() -> ApiError:
    """413 for a body over Django's DATA_UPLOAD_MAX_MEMORY_SIZE (JSON or form)."""
    return ApiError(
        413,
        "invalid_request",
        f"the body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes",
    )
