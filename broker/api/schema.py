"""Request validation for the internal API, and the OpenAPI 3.1 document built from the same
field lists, so the document cannot drift from what the views accept.

Bodies are JSON objects; an unknown field or a value of the wrong type is a 400
`invalid_request` naming the field. A body larger than DATA_UPLOAD_MAX_MEMORY_SIZE is a 413,
one nested deeper than the parser can follow a 400: never a 500.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest
from django.urls import reverse

from broker.api.errors import ApiError, invalid_request
from broker.api.tokens import API_SCOPES

# No URL may carry NUL (broker.ops.request_guard answers 400).
NO_NUL = "^[^\\u0000]*$"
# RFC 8693 3: the user tokens a service may exchange (all must be JWTs from a trusted issuer).
SUBJECT_TOKEN_TYPES = [
    "urn:ietf:params:oauth:token-type:id_token",
    "urn:ietf:params:oauth:token-type:jwt",
    "urn:ietf:params:oauth:token-type:access_token",
]
TYPE_NAMES = {str: "a string", int: "an integer", bool: "a boolean", list: "a list of strings"}
JSON_TYPES = {str: "string", int: "integer", bool: "boolean"}


@dataclass(frozen=True)
class Field:
    name: str
    type: type
    description: str
    required: bool = False
    format: str = ""
    minimum: int | None = None
    max_length: int = 2000

    def json_schema(self) -> dict[str, Any]:
        if self.type is list:
            schema: dict[str, Any] = {
                "type": "array",
                "items": {"type": "string", "minLength": 1, "maxLength": 200},
                "maxItems": 100,
            }
        else:
            schema = {"type": JSON_TYPES[self.type]}
        if self.type is str:
            schema["maxLength"] = self.max_length
            schema["minLength"] = 1
        if self.format:
            schema["format"] = self.format
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        schema["description"] = self.description
        return schema

    def check(self, value: Any) -> Any:
        if self.type is int and isinstance(value, float) and value.is_integer():
            value = int(value)  # JSON Schema: 17.0 is an integer
        ok = isinstance(value, self.type) and not (self.type is int and isinstance(value, bool))
        if ok and self.type is list:
            ok = all(isinstance(item, str) and 0 < len(item) <= 200 for item in value)
            ok = ok and len(value) <= 100
        if not ok:
            raise invalid_request(f"field {self.name!r} must be {TYPE_NAMES[self.type]}")
        if self.type is str:
            if not is_text(value):
                raise invalid_request(f"field {self.name!r} must be valid Unicode text")
            if not value or len(value) > self.max_length:
                raise invalid_request(
                    f"field {self.name!r} must be 1 to {self.max_length} characters long"
                )
            if self.format == "uuid":
                try:
                    uuid.UUID(value)
                except ValueError:
                    raise invalid_request(f"field {self.name!r} must be a UUID") from None
        if self.minimum is not None and value < self.minimum:
            raise invalid_request(f"field {self.name!r} must be at least {self.minimum}")
        return value


GRANT = Field("grant", str, "Grant id (use either grant, or user and provider)", format="uuid")
USER = Field("user", str, "The broker account's username", max_length=150)
PROVIDER = Field("provider", str, "Provider app slug", max_length=64)
ACCESS_TOKEN_FIELDS = (
    GRANT,
    USER,
    PROVIDER,
    Field(
        "scopes",
        list,
        "Scopes the service needs: each must be allowed by its access rules and held by the "
        "grant. This does not narrow the token, which carries the grant's scopes",
    ),
    Field(
        "min_ttl",
        int,
        "Seconds the returned token must stay valid (default 60; capped to the provider's "
        "token lifetime minus a margin)",
        minimum=0,
    ),
    Field("force_refresh", bool, "Return a token from a refresh completed after this request"),
)
SIGN_FIELDS = (
    GRANT,
    USER,
    PROVIDER,
    Field("method", str, "HTTP method of the request to sign", required=True, max_length=16),
    Field("url", str, "Full URL of the request, with its query string", required=True),
    Field("body", str, "Form-encoded body, when the request has one", max_length=100_000),
    Field("content_type", str, "Content type of the body", max_length=200),
)
CONNECT_LINK_FIELDS = (
    Field("user", str, "The broker account's username", required=True, max_length=150),
    Field("provider", str, "Provider app slug", required=True, max_length=64),
    Field(
        "scopes",
        list,
        "Scopes to ask the user for (default: the app's); must be within the service's "
        "access rules. Consent is incremental: the provider is also asked for what the "
        "user's grant already holds, so the grant never shrinks",
    ),
    Field(
        "return_to",
        str,
        "Where the user lands afterwards; its origin must be allow-listed",
        required=True,
    ),
)


def is_text(value: str) -> bool:
    """False for a string JSON can carry but UTF-8 cannot (a lone surrogate, "\\ud800"):
    no database can store or compare it."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def matchable(*values: str) -> bool:
    """False when a value holds NUL or is not valid text: no username, slug, id or key name
    does, and databases refuse to compare it (PostgreSQL any NUL, every database a lone
    surrogate), so such a lookup finds nothing without asking the database."""
    return all("\x00" not in value and is_text(value) for value in values)


def parse_json_body(request: HttpRequest, fields: tuple[Field, ...]) -> dict[str, Any]:
    """The request's JSON object, checked against `fields`; raises ApiError 400."""
    content_type = request.content_type or ""
    if content_type != "application/json":
        raise ApiError(415, "invalid_request", "the body must be application/json")
    try:
        body = json.loads(request.body or b"null")
    except RequestDataTooBig:
        raise ApiError(
            413,
            "invalid_request",
            f"the body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes",
        ) from None
    except RecursionError:
        raise invalid_request("the body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError):
        raise invalid_request("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise invalid_request("the body must be a JSON object")
    known = {f.name: f for f in fields}
    for name in body:
        if name not in known:
            raise invalid_request(f"unknown field {name!r}")
    for field in fields:
        if field.name in body:
            body[field.name] = field.check(body[field.name])
        elif field.required:
            raise invalid_request(f"field {field.name!r} is required")
    return body


def request_body_schema(fields: tuple[Field, ...], *, one_grant: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {f.name: f.json_schema() for f in fields},
    }
    required = [f.name for f in fields if f.required]
    if required:
        schema["required"] = required
    if one_grant:
        schema["oneOf"] = [
            {
                "required": ["grant"],
                "not": {"anyOf": [{"required": ["user"]}, {"required": ["provider"]}]},
            },
            {"required": ["user", "provider"], "not": {"required": ["grant"]}},
        ]
    return schema


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _ok(description: str, ref: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }


TOO_LARGE = _error("The body is larger than 1 MB (DATA_UPLOAD_MAX_MEMORY_SIZE)")
RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds"}}


def _bearer_errors() -> dict[str, Any]:
    return {
        "401": _error("Missing, invalid, expired or retired broker token (`invalid_token`)"),
        "403": _error("The broker token lacks the API scope (`insufficient_scope`)"),
        "429": {
            **_error(
                "Rate limit of this service exceeded, or too many invalid broker tokens from "
                "this address"
            ),
            "headers": RETRY_AFTER,
        },
    }


def _json_body(fields: tuple[Field, ...], *, one_grant: bool = False) -> dict[str, Any]:
    return {
        "required": True,
        "content": {
            "application/json": {"schema": request_body_schema(fields, one_grant=one_grant)}
        },
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of /api/v1/, served at /api/v1/openapi.json."""
    token_url = settings.BROKER_PUBLIC_URL + reverse("api-token")
    string: dict[str, Any] = {"type": "string"}
    text = string
    grant_schema = {
        "type": "object",
        "required": [
            "id",
            "user",
            "provider",
            "status",
            "reconnect_soon",
            "account",
            "scopes",
            "resources",
        ],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "user": string,
            "provider": string,
            "status": {"type": "string", "enum": ["active", "reconnect_required", "revoked"]},
            "reconnect_soon": {
                "type": "boolean",
                "description": "the refresh token expires soon regardless of use: reconnect",
            },
            "account": {"$ref": "#/components/schemas/Account"},
            "scopes": {"type": "array", "items": string},
            "resources": {"type": "array", "items": {"type": "object"}},
            "access_expires_at": {"type": ["string", "null"], "format": "date-time"},
            "last_used_at": {"type": ["string", "null"], "format": "date-time"},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "OAuth broker internal API",
            "version": "1.0.0",
            "description": (
                "Services authenticate at /api/v1/oauth/token (client credentials) and call "
                "the other endpoints with `Authorization: Bearer <broker token>`. A service "
                "acting for a signed-in user exchanges the user's token from the company IdP "
                "for the user's provider token at the same endpoint (RFC 8693)."
            ),
        },
        "servers": [{"url": settings.BROKER_PUBLIC_URL}],
        "paths": {
            "/api/v1/oauth/token": {
                "post": {
                    "operationId": "token",
                    "summary": "Client credentials grant (RFC 6749 4.4) for services, and "
                    "token exchange (RFC 8693) for a service acting for a signed-in user",
                    "description": (
                        "With `grant_type=urn:ietf:params:oauth:grant-type:token-exchange`, "
                        "the service (authenticated as for client credentials) presents a "
                        "user's JWT from a trusted issuer as `subject_token`, names the "
                        "provider app with `audience=<slug>` or "
                        "`resource=urn:broker:provider:<slug>`, and receives that user's "
                        "provider access token (`issued_token_type` "
                        "`urn:ietf:params:oauth:token-type:access_token`). The subject "
                        "token's `aud` must be registered for the service."
                    ),
                    "security": [{"clientSecretBasic": []}, {}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/x-www-form-urlencoded": {
                                "schema": {
                                    "type": "object",
                                    "required": ["grant_type"],
                                    "properties": {
                                        "grant_type": {
                                            "type": "string",
                                            "enum": [
                                                "client_credentials",
                                                "urn:ietf:params:oauth:grant-type:token-exchange",
                                            ],
                                        },
                                        "scope": text,
                                        "subject_token": text,
                                        "subject_token_type": {
                                            "type": "string",
                                            "enum": SUBJECT_TOKEN_TYPES,
                                        },
                                        "audience": text,
                                        "resource": text,
                                        "client_id": text,
                                        "client_secret": text,
                                        "client_assertion_type": {
                                            "type": "string",
                                            "enum": [
                                                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
                                            ],
                                        },
                                        "client_assertion": text,
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _ok(
                            "A broker token, or (token exchange) the user's provider token",
                            "TokenResponse",
                        ),
                        "400": _error(
                            "invalid_request (also: a subject token that is malformed, "
                            "expired, from an untrusted issuer, badly signed, for another "
                            "audience, or naming no active user), unsupported_grant_type, "
                            "invalid_scope, invalid_target (token exchange: an app the "
                            "service may not use for this user, or where the user has no "
                            "grant), api_token_grant (the grant holds an API token, which is "
                            "never handed out)"
                        ),
                        "401": _error("invalid_client"),
                        "403": _error(
                            "insufficient_scope (token exchange: scopes beyond the rules or "
                            "the grant)"
                        ),
                        "404": _error("Token exchange: the grant went away meanwhile"),
                        "409": _error("reconnect_required (token exchange)"),
                        "405": _error("Method not allowed"),
                        "413": TOO_LARGE,
                        "415": _error("The body must be form-encoded"),
                        "503": {
                            **_error("temporarily_unavailable (token exchange)"),
                            "headers": RETRY_AFTER,
                        },
                        "429": {
                            **_error(
                                "Rate limit exceeded, or too many failed authentications "
                                "from this address or for this client id"
                            ),
                            "headers": RETRY_AFTER,
                        },
                    },
                }
            },
            "/api/v1/grants": {
                "get": {
                    "operationId": "listGrants",
                    "summary": "Grants this service may see (never tokens; none of a "
                    "deactivated user), a page at a time",
                    "description": (
                        "Grants in creation order, at most `limit` (default and maximum "
                        "1000) per answer. `next` is the URL of the following page (the same "
                        "filters and a `cursor`), or null on the last page: follow it until "
                        "it is null to see every grant."
                    ),
                    "security": [{"brokerToken": ["grants:read"]}],
                    "parameters": [
                        {
                            "name": "user",
                            "in": "query",
                            "schema": {"type": "string", "maxLength": 150, "pattern": NO_NUL},
                        },
                        {
                            "name": "provider",
                            "in": "query",
                            "schema": {"type": "string", "maxLength": 64, "pattern": NO_NUL},
                        },
                        {
                            "name": "status",
                            "in": "query",
                            "schema": {
                                "type": "string",
                                "enum": ["active", "reconnect_required", "revoked"],
                            },
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "description": "Grants per page",
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": 1000,
                                "default": 1000,
                            },
                        },
                        {
                            "name": "cursor",
                            "in": "query",
                            "description": "Where a page starts: taken from a previous `next`",
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": {
                        "200": _ok("Visible grants", "GrantList"),
                        "400": _error("Unknown query parameter or bad value"),
                        **_bearer_errors(),
                    },
                }
            },
            "/api/v1/access-token": {
                "post": {
                    "operationId": "accessToken",
                    "summary": "A valid access token for a user's OAuth 2.0 grant",
                    "security": [{"brokerToken": ["tokens:read"]}],
                    "requestBody": _json_body(ACCESS_TOKEN_FIELDS, one_grant=True),
                    "responses": {
                        "200": _ok("The token", "AccessToken"),
                        "400": _error(
                            "invalid_request (names the field); api_token_grant (the grant "
                            "holds an API token, which is never handed out: use the proxy)"
                        ),
                        **_bearer_errors(),
                        "403": _error(
                            "Denied by the access rules (`access_denied`; "
                            "`on_behalf_of_required`: the rules serve this grant only with the "
                            "user's token, by token exchange), or `insufficient_scope`: the "
                            "scopes asked for are beyond the rules or the grant, or the token "
                            "carries scopes the rules do not allow and the provider cannot "
                            "issue a narrower one; the description names them"
                        ),
                        "404": _error(
                            "No such grant visible to this service (also when its user is "
                            "deactivated)"
                        ),
                        "409": _error("reconnect_required: the user must connect again"),
                        "413": TOO_LARGE,
                        "415": _error("The body must be application/json"),
                        "503": {
                            **_error(
                                "temporarily_unavailable: the provider is failing and no valid "
                                "token is left, or force_refresh was asked (while the stored "
                                "token is valid, a failed refresh serves it, with its true "
                                "expires_in, even below min_ttl)"
                            ),
                            "headers": RETRY_AFTER,
                        },
                    },
                }
            },
            "/api/v1/sign": {
                "post": {
                    "operationId": "sign",
                    "summary": "A signed OAuth 1.0a Authorization header for one request",
                    "security": [{"brokerToken": ["requests:sign"]}],
                    "requestBody": _json_body(SIGN_FIELDS, one_grant=True),
                    "parameters": [
                        {
                            "name": "Broker-Subject-Token",
                            "in": "header",
                            "description": "The user's token from the company IdP, when "
                            "acting for them (required by on-behalf-of rules)",
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        "200": _ok("The header value", "Signature"),
                        "400": _error(
                            "invalid_request (names the field, or the subject token is not "
                            "valid); api_token_grant (the grant holds an API token)"
                        ),
                        **_bearer_errors(),
                        "403": _error(
                            "No rule lets this service sign for this grant; "
                            "on_behalf_of_required: only with Broker-Subject-Token"
                        ),
                        "404": _error(
                            "No such grant visible to this service (or not the subject "
                            "token's user's)"
                        ),
                        "409": _error("reconnect_required"),
                        "413": TOO_LARGE,
                        "415": _error("The body must be application/json"),
                    },
                }
            },
            "/api/v1/connect-links": {
                "post": {
                    "operationId": "createConnectLink",
                    "summary": "A single-use link that sends a user through consent",
                    "security": [{"brokerToken": ["connect-links:create"]}],
                    "requestBody": _json_body(CONNECT_LINK_FIELDS),
                    "responses": {
                        "201": _ok("The link", "ConnectLink"),
                        "400": _error("invalid_request (names the field; return_to not allowed)"),
                        **_bearer_errors(),
                        "403": _error("No rule lets this service create links for this user"),
                        "404": _error("No such user or provider visible to this service"),
                        "413": TOO_LARGE,
                        "415": _error("The body must be application/json"),
                    },
                }
            },
            "/api/v1/ping": {
                "get": {
                    "operationId": "ping",
                    "summary": "Checks a broker token (same authentication as every endpoint)",
                    "security": [{"brokerToken": []}],
                    "responses": {
                        "200": _ok("Who the token belongs to", "Ping"),
                        **_bearer_errors(),
                    },
                }
            },
            "/api/v1/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {
                "brokerToken": {
                    "type": "oauth2",
                    "description": "Broker token from the client credentials grant",
                    "flows": {
                        "clientCredentials": {
                            "tokenUrl": token_url,
                            "scopes": {scope: scope for scope in API_SCOPES},
                        }
                    },
                },
                "clientSecretBasic": {"type": "http", "scheme": "basic"},
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "error_description"],
                    "properties": {"error": string, "error_description": string},
                },
                "TokenResponse": {
                    "type": "object",
                    "required": ["access_token", "token_type", "expires_in", "scope"],
                    "properties": {
                        "access_token": string,
                        "issued_token_type": {
                            "type": "string",
                            "description": "Token exchange only (RFC 8693 2.2.1)",
                            "enum": ["urn:ietf:params:oauth:token-type:access_token"],
                        },
                        "token_type": {"type": "string", "enum": ["Bearer"]},
                        "expires_in": {"type": ["integer", "null"]},
                        "scope": string,
                    },
                },
                "Account": {
                    "type": "object",
                    "required": ["id", "name", "email"],
                    "properties": {"id": string, "name": string, "email": string},
                },
                "Grant": grant_schema,
                "GrantList": {
                    "type": "object",
                    "required": ["grants", "next"],
                    "properties": {
                        "grants": {
                            "type": "array",
                            "maxItems": 1000,
                            "items": {"$ref": "#/components/schemas/Grant"},
                        },
                        "next": {
                            "type": ["string", "null"],
                            "format": "uri",
                            "description": "The next page's URL; null on the last page",
                        },
                    },
                },
                "AccessToken": {
                    "type": "object",
                    "required": [
                        "access_token",
                        "token_type",
                        "expires_at",
                        "expires_in",
                        "scopes",
                        "grant",
                        "account",
                        "resources",
                    ],
                    "properties": {
                        "access_token": string,
                        "token_type": string,
                        "expires_at": {"type": ["string", "null"], "format": "date-time"},
                        "expires_in": {"type": ["integer", "null"]},
                        "scopes": {
                            "type": "array",
                            "items": string,
                            "description": "the scopes the returned token carries",
                        },
                        "grant": {"type": "string", "format": "uuid"},
                        "account": {"$ref": "#/components/schemas/Account"},
                        "resources": {"type": "array", "items": {"type": "object"}},
                    },
                },
                "Signature": {
                    "type": "object",
                    "required": ["authorization"],
                    "properties": {"authorization": string},
                },
                "ConnectLink": {
                    "type": "object",
                    "required": ["url", "expires_at"],
                    "properties": {
                        "url": string,
                        "expires_at": {"type": "string", "format": "date-time"},
                    },
                },
                "Ping": {
                    "type": "object",
                    "required": ["service", "scopes"],
                    "properties": {"service": string, "scopes": {"type": "array", "items": string}},
                },
            },
        },
    }
