"""The OpenAPI 3.1 document of /api/v1/, served at /api/v1/openapi.json.

Every operation is declared once below: its route (by URL name, as in broker/api/urls.py),
method, the request and answer shapes of broker.api.schema, and the statuses it answers.
The document is generated from these declarations and shapes; tests/api/test_api_declarations.py
checks that every route is declared and every declared status is one the view answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Any

from django.conf import settings
from django.urls import reverse
from pydantic import TypeAdapter

from broker.api import schema
from broker.service_identity.tokens import API_SCOPES


@dataclass(frozen=True)
class Answer:
    description: str
    # The shape of a success's body; every error is an `Error`.
    shape: type | None = None
    # Sent with Retry-After.
    retry_after: bool = False


@dataclass(frozen=True)
class Operation:
    url_name: str
    method: str
    operation_id: str
    summary: str
    # What the view answers itself; those of the broker token's check are added.
    answers: dict[int, Answer]
    # Called with a broker token carrying this API scope (None: any broker token).
    scope: str | None = None
    broker_token: bool = True
    # How the caller authenticates otherwise.
    security: list[dict[str, list[str]]] | None = None
    description: str = ""
    # A JSON body (validated by the view with it), or a form shape (read by hand).
    json_body: schema.JsonBody[Any] | None = None
    form: type | None = None
    query: type | None = None
    headers: list[dict[str, Any]] = field(default_factory=list)

    def all_answers(self) -> dict[int, Answer]:
        """Every status the endpoint answers (the broker token's check included)."""
        if not self.broker_token:
            return self.answers
        return {**bearer_errors(self.scope), **self.answers}


TOO_LARGE = Answer("The body is larger than 1 MB (DATA_UPLOAD_MAX_MEMORY_SIZE)")
NOT_JSON = Answer("The body must be application/json")


def bearer_errors(scope: str | None) -> dict[int, Answer]:
    """What every endpoint behind a broker token may answer (broker.api.auth), before its
    view runs."""
    errors = {
        401: Answer("Missing, invalid, expired or retired broker token (`invalid_token`)"),
        429: Answer(
            "Rate limit of this service exceeded, or too many invalid broker tokens from "
            "this address",
            retry_after=True,
        ),
    }
    if scope is not None:
        errors[403] = Answer(f"The broker token lacks the API scope {scope} (`insufficient_scope`)")
    return errors


OPERATIONS = [
    Operation(
        url_name="api-token",
        method="POST",
        operation_id="token",
        summary="Client credentials grant (RFC 6749 4.4) for services, and token exchange "
        "(RFC 8693) for a service acting for a signed-in user",
        description=(
            "With `grant_type=urn:ietf:params:oauth:grant-type:token-exchange`, the service "
            "(authenticated as for client credentials) presents a user's JWT from a trusted "
            "issuer as `subject_token`, names the provider app with `audience=<slug>` or "
            "`resource=urn:broker:provider:<slug>`, and receives that user's provider access "
            "token (`issued_token_type` `urn:ietf:params:oauth:token-type:access_token`). The "
            "subject token's `aud` must be registered for the service."
        ),
        broker_token=False,
        security=[{"clientSecretBasic": []}, {}],
        form=schema.TokenForm,
        answers={
            200: Answer(
                "A broker token, or (token exchange) the user's provider token",
                schema.TokenResponse,
            ),
            400: Answer(
                "invalid_request (also: a body that is not form-encoded, or a subject token "
                "that is malformed, expired, from an untrusted issuer, badly signed, for "
                "another audience, or naming no active user), unsupported_grant_type, "
                "invalid_scope, invalid_target (token exchange: an app the service may not "
                "use for this user, or where the user has no grant), api_token_grant (the "
                "grant holds an API token, which is never handed out)"
            ),
            401: Answer("invalid_client"),
            403: Answer(
                "insufficient_scope (token exchange: scopes beyond the rules or the grant)"
            ),
            404: Answer("Token exchange: the grant went away meanwhile"),
            409: Answer("reconnect_required (token exchange)"),
            413: TOO_LARGE,
            429: Answer(
                "Rate limit exceeded, or too many failed authentications from this address "
                "or for this client id",
                retry_after=True,
            ),
            503: Answer("temporarily_unavailable (token exchange)", retry_after=True),
        },
    ),
    Operation(
        url_name="api-grants",
        method="GET",
        operation_id="listGrants",
        summary="Grants this service may see (never tokens; none of a deactivated user), a "
        "page at a time",
        description=(
            "Grants in creation order, at most `limit` (default and maximum 1000) per answer. "
            "`next` is the URL of the following page (the same filters and a `cursor`), or "
            "null on the last page: follow it until it is null to see every grant."
        ),
        scope="grants:read",
        query=schema.GrantListQuery,
        answers={
            200: Answer("Visible grants", schema.GrantList),
            400: Answer("Unknown query parameter or bad value"),
        },
    ),
    Operation(
        url_name="api-access-token",
        method="POST",
        operation_id="accessToken",
        summary="A valid access token for a user's OAuth 2.0 grant",
        scope="tokens:read",
        json_body=schema.ACCESS_TOKEN_BODY,
        answers={
            200: Answer("The token", schema.AccessToken),
            400: Answer(
                "invalid_request (names the field); api_token_grant (the grant holds an API "
                "token, which is never handed out: use the proxy)"
            ),
            403: Answer(
                "Denied by the access rules (`access_denied`; `on_behalf_of_required`: the "
                "rules serve this grant only with the user's token, by token exchange), or "
                "`insufficient_scope`: the scopes asked for are beyond the rules or the "
                "grant, or the token carries scopes the rules do not allow and the provider "
                "cannot issue a narrower one; the description names them"
            ),
            404: Answer(
                "No such grant visible to this service (also when its user is deactivated)"
            ),
            409: Answer("reconnect_required: the user must connect again"),
            413: TOO_LARGE,
            415: NOT_JSON,
            503: Answer(
                "temporarily_unavailable: the provider is failing and no valid token is "
                "left, or force_refresh was asked (while the stored token is valid, a failed "
                "refresh serves it, with its true expires_in, even below min_ttl)",
                retry_after=True,
            ),
        },
    ),
    Operation(
        url_name="api-sign",
        method="POST",
        operation_id="sign",
        summary="A signed OAuth 1.0a Authorization header for one request",
        scope="requests:sign",
        json_body=schema.SIGN_BODY,
        headers=[
            {
                "name": "Broker-Subject-Token",
                "in": "header",
                "description": "The user's token from the company IdP, when acting for them "
                "(required by on-behalf-of rules)",
                "schema": {"type": "string"},
            }
        ],
        answers={
            200: Answer("The header value", schema.Signature),
            400: Answer(
                "invalid_request (names the field, or the subject token is not valid); "
                "api_token_grant (the grant holds an API token)"
            ),
            403: Answer(
                "No rule lets this service sign for this grant; on_behalf_of_required: only "
                "with Broker-Subject-Token"
            ),
            404: Answer(
                "No such grant visible to this service (or not the subject token's user's)"
            ),
            409: Answer("reconnect_required"),
            413: TOO_LARGE,
            415: NOT_JSON,
        },
    ),
    Operation(
        url_name="api-connect-links",
        method="POST",
        operation_id="createConnectLink",
        summary="A single-use link that sends a user through consent",
        scope="connect-links:create",
        json_body=schema.CONNECT_LINK_BODY,
        answers={
            201: Answer("The link", schema.ConnectLink),
            400: Answer("invalid_request (names the field; return_to not allowed)"),
            403: Answer("No rule lets this service create links for this user"),
            404: Answer("No such user or provider visible to this service"),
            413: TOO_LARGE,
            415: NOT_JSON,
        },
    ),
    Operation(
        url_name="api-ping",
        method="GET",
        operation_id="ping",
        summary="Checks a broker token (same authentication as every endpoint)",
        answers={200: Answer("Who the token belongs to", schema.Ping)},
    ),
    Operation(
        url_name="api-openapi",
        method="GET",
        operation_id="openapi",
        summary="This document",
        broker_token=False,
        security=[],
        answers={200: Answer("OpenAPI 3.1")},
    ),
]


@cache
def _shape_schema(shape: type) -> dict[str, Any]:
    """A shape's JSON Schema, generated once per process (pydantic takes milliseconds; the
    document is served to anyone). Read only."""
    return schema.json_schema(TypeAdapter(shape))


class _Components:
    """The shapes the document references, collected while the operations are written."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def ref(self, shape: type) -> dict[str, str]:
        if shape.__name__ not in self.schemas:
            self.schemas[shape.__name__] = self.inline(shape)
        return {"$ref": schema.REF_TEMPLATE.format(model=shape.__name__)}

    def inline(self, shape: type) -> dict[str, Any]:
        generated = dict(_shape_schema(shape))
        self.schemas.update(generated.pop("$defs", {}))
        return generated


def _answer(status: int, answer: Answer, components: _Components) -> dict[str, Any]:
    if status < 400:
        shape_schema = components.ref(answer.shape) if answer.shape else {"type": "object"}
    else:
        shape_schema = components.ref(schema.Error)
    written: dict[str, Any] = {
        "description": answer.description,
        "content": {"application/json": {"schema": shape_schema}},
    }
    if answer.retry_after:
        written["headers"] = {
            "Retry-After": {"schema": {"type": "integer"}, "description": "Seconds"}
        }
    return written


def _operation(operation: Operation, components: _Components) -> dict[str, Any]:
    written: dict[str, Any] = {
        "operationId": operation.operation_id,
        "summary": operation.summary,
    }
    if operation.description:
        written["description"] = operation.description
    if operation.broker_token:
        written["security"] = [{"brokerToken": [operation.scope] if operation.scope else []}]
    else:
        written["security"] = operation.security or []
    if operation.json_body is not None:
        written["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": operation.json_body.json_schema}},
        }
    if operation.form is not None:
        written["requestBody"] = {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {"schema": components.inline(operation.form)}
            },
        }
    parameters = list(operation.headers)
    if operation.query is not None:
        query = components.inline(operation.query)
        for name, parameter_schema in query["properties"].items():
            parameter: dict[str, Any] = {"name": name, "in": "query"}
            if "description" in parameter_schema:
                parameter["description"] = parameter_schema["description"]
            value_schema = {k: v for k, v in parameter_schema.items() if k != "description"}
            parameters.append({**parameter, "schema": value_schema})
    if parameters:
        written["parameters"] = parameters
    written["responses"] = {
        str(status): _answer(status, answer, components)
        for status, answer in sorted(operation.all_answers().items())
    }
    return written


def openapi_document() -> dict[str, Any]:
    components = _Components()
    paths: dict[str, dict[str, Any]] = {}
    for operation in OPERATIONS:
        paths.setdefault(reverse(operation.url_name), {})[operation.method.lower()] = _operation(
            operation, components
        )
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
        "paths": paths,
        "components": {
            "securitySchemes": {
                "brokerToken": {
                    "type": "oauth2",
                    "description": "Broker token from the client credentials grant",
                    "flows": {
                        "clientCredentials": {
                            "tokenUrl": settings.BROKER_PUBLIC_URL + reverse("api-token"),
                            "scopes": {scope: scope for scope in API_SCOPES},
                        }
                    },
                },
                "clientSecretBasic": {"type": "http", "scheme": "basic"},
            },
            "schemas": components.schemas,
        },
    }
