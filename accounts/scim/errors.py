"""SCIM error answers (RFC 7644 3.12): `urn:ietf:params:scim:api:messages:2.0:Error` with the
HTTP status as a string and, for a 400 or a 409, the `scimType` that says why."""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpResponse

ERROR_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:Error"
CONTENT_TYPE = "application/scim+json"


class ScimError(Exception):
    """A refusal: `status` (400, 401, 404, 409, ...), `scim_type` (RFC 7644 table 9, e.g.
    `invalidValue`, `invalidFilter`, `invalidSyntax`, `uniqueness`, `noTarget`)."""

    def __init__(self, status: int, detail: str, scim_type: str = "") -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.scim_type = scim_type


def invalid_value(detail: str) -> ScimError:
    return ScimError(400, detail, "invalidValue")


def scim_response(body: dict[str, Any], status: int = 200, **headers: str) -> HttpResponse:
    return HttpResponse(json.dumps(body), status=status, content_type=CONTENT_TYPE, headers=headers)


def error_response(error: ScimError) -> HttpResponse:
    body: dict[str, Any] = {
        "schemas": [ERROR_SCHEMA],
        "status": str(error.status),
        "detail": error.detail,
    }
    if error.scim_type:
        body["scimType"] = error.scim_type
    headers = {"WWW-Authenticate": 'Bearer realm="scim"'} if error.status == 401 else {}
    return scim_response(body, error.status, **headers)
