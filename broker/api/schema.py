"""The shapes of the internal API's requests and answers, in one place: the views validate
JSON bodies with them and build their answers to them, and broker.api.openapi generates the
OpenAPI document from them, so the document cannot drift from what the views do.

Shapes are TypedDicts: a validated body is a plain dict in which a field not given stays
absent (no null stands in for "not given"), mypy checks every key a view reads or writes,
and pydantic validates them (strictly: no coercion of "17" to 17) and writes their JSON
Schema. Each request shape's TypeAdapter is built once, at import: validating a body costs
microseconds on the hot path.

Bodies are JSON objects; an unknown field or a value of the wrong type is a 400
`invalid_request` naming the field (never echoing the value). A body larger than
DATA_UPLOAD_MAX_MEMORY_SIZE is a 413, one nested deeper than the parser can follow a 400,
one not sent as application/json a 415: never a 500.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Final, Generic, Literal, NotRequired, TypeVar, get_args

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    with_config,
)
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict

from broker.api.errors import ApiError, body_too_large, invalid_request
from broker.infra import bounded_json
from broker.infra.lookup_text import is_text
from broker.models import Grant
from broker.service_identity.client_assertions import ClientAssertionType

# --- the values the API speaks (the views and the document both read them here) --------

GrantType = Literal["client_credentials", "urn:ietf:params:oauth:grant-type:token-exchange"]
CLIENT_CREDENTIALS, TOKEN_EXCHANGE = get_args(GrantType)
# RFC 8693 3: the user tokens a service may exchange (all must be JWTs from a trusted issuer).
SubjectTokenType = Literal[
    "urn:ietf:params:oauth:token-type:id_token",
    "urn:ietf:params:oauth:token-type:jwt",
    "urn:ietf:params:oauth:token-type:access_token",
]
SUBJECT_TOKEN_TYPES: list[str] = list(get_args(SubjectTokenType))
# RFC 8693 2.2.1: what the exchange issues (TokenResponse's type makes mypy hold them equal).
ISSUED_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:access_token"
# No URL may carry NUL (broker.ops.request_guard answers 400).
NO_NUL = "^[^\\u0000]*$"


# --- field types ------------------------------------------------------------------------


def _text_only(value: Any) -> Any:
    # Before the type and length checks, as the error order of the API has always been.
    if isinstance(value, str) and not is_text(value):
        raise PydanticCustomError("unicode", "not valid Unicode text")
    return value


def _uuid_only(value: str) -> str:
    try:
        uuid.UUID(value)
    except ValueError:
        raise PydanticCustomError("uuid", "not a UUID") from None
    return value


def _integral_float_as_int(value: Any) -> Any:
    # JSON Schema: 17.0 is an integer.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Text = Annotated[str, BeforeValidator(_text_only), Field(min_length=1, max_length=2000)]
Username = Annotated[Text, Field(max_length=150)]
Slug = Annotated[Text, Field(max_length=64)]
GrantId = Annotated[Text, AfterValidator(_uuid_only), Field(json_schema_extra={"format": "uuid"})]
Scopes = Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]], Field(max_length=100)]
Seconds = Annotated[int, Field(ge=0), BeforeValidator(_integral_float_as_int)]
# An ISO 8601 UTC time as the views write it (`_iso`).
Time = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]
NullableTime = Annotated[
    str | None, WithJsonSchema({"type": ["string", "null"], "format": "date-time"})
]
NullableSeconds = Annotated[int | None, WithJsonSchema({"type": ["integer", "null"]})]
GrantStatus = Annotated[str, WithJsonSchema({"type": "string", "enum": Grant.Status.values})]
JsonObject = Annotated[dict[str, Any], WithJsonSchema({"type": "object"})]

STRICT = ConfigDict(strict=True, extra="forbid")

# A grant is named by its id, or by its user and provider; never both.
ONE_GRANT: list[JsonValue] = [
    {"required": ["grant"], "not": {"anyOf": [{"required": ["user"]}, {"required": ["provider"]}]}},
    {"required": ["user", "provider"], "not": {"required": ["grant"]}},
]
ONE_GRANT_STRICT = ConfigDict(strict=True, extra="forbid", json_schema_extra={"oneOf": ONE_GRANT})


# --- request bodies ---------------------------------------------------------------------


class GrantNamed(TypedDict):
    grant: NotRequired[
        Annotated[GrantId, Field(description="Grant id (use either grant, or user and provider)")]
    ]
    user: NotRequired[Annotated[Username, Field(description="The broker account's username")]]
    provider: NotRequired[Annotated[Slug, Field(description="Provider app slug")]]


@with_config(ONE_GRANT_STRICT)
class AccessTokenRequest(GrantNamed):
    scopes: NotRequired[
        Annotated[
            Scopes,
            Field(
                description="Scopes the service needs: each must be allowed by its access "
                "rules and held by the grant. This does not narrow the token, which carries "
                "the grant's scopes"
            ),
        ]
    ]
    min_ttl: NotRequired[
        Annotated[
            Seconds,
            Field(
                description="Seconds the returned token must stay valid (default 60; capped "
                "to the provider's token lifetime minus a margin)"
            ),
        ]
    ]
    force_refresh: NotRequired[
        Annotated[
            bool, Field(description="Return a token from a refresh completed after this request")
        ]
    ]


@with_config(ONE_GRANT_STRICT)
class SignRequest(GrantNamed):
    method: Annotated[Text, Field(max_length=16, description="HTTP method of the request to sign")]
    url: Annotated[Text, Field(description="Full URL of the request, with its query string")]
    body: NotRequired[
        Annotated[
            Text,
            Field(max_length=100_000, description="Form-encoded body, when the request has one"),
        ]
    ]
    content_type: NotRequired[
        Annotated[Text, Field(max_length=200, description="Content type of the body")]
    ]


@with_config(STRICT)
class ConnectLinkRequest(TypedDict):
    user: Annotated[Username, Field(description="The broker account's username")]
    provider: Annotated[Slug, Field(description="Provider app slug")]
    scopes: NotRequired[
        Annotated[
            Scopes,
            Field(
                description="Scopes to ask the user for (default: the app's); must be within "
                "the service's access rules. Consent is incremental: the provider is also "
                "asked for what the user's grant already holds, so the grant never shrinks"
            ),
        ]
    ]
    return_to: Annotated[
        Text, Field(description="Where the user lands afterwards; its origin must be allow-listed")
    ]


# The form of POST /api/v1/oauth/token (RFC 6749 4.4, RFC 8693 2.1, RFC 7523 2.2). The view
# reads it by hand: its errors follow the RFCs, and unknown parameters are ignored (RFC 6749
# 3.2).
class TokenForm(TypedDict):
    grant_type: GrantType
    scope: NotRequired[str]
    subject_token: NotRequired[str]
    subject_token_type: NotRequired[SubjectTokenType]
    audience: NotRequired[str]
    resource: NotRequired[str]
    client_id: NotRequired[str]
    client_secret: NotRequired[str]
    client_assertion_type: NotRequired[ClientAssertionType]
    client_assertion: NotRequired[str]


# The query of GET /api/v1/grants: the view reads it by hand and allows these names only.
class GrantListQuery(TypedDict):
    user: NotRequired[Annotated[str, Field(max_length=150, pattern=NO_NUL)]]
    provider: NotRequired[Annotated[str, Field(max_length=64, pattern=NO_NUL)]]
    status: NotRequired[GrantStatus]
    limit: NotRequired[
        Annotated[int, Field(ge=1, le=1000, default=1000, description="Grants per page")]
    ]
    cursor: NotRequired[
        Annotated[str, Field(description="Where a page starts: taken from a previous `next`")]
    ]


# --- answers ----------------------------------------------------------------------------


class Error(TypedDict):
    error: str
    error_description: str


class TokenResponse(TypedDict):
    access_token: str
    issued_token_type: NotRequired[
        Annotated[
            Literal["urn:ietf:params:oauth:token-type:access_token"],
            Field(description="Token exchange only (RFC 8693 2.2.1)"),
        ]
    ]
    token_type: Literal["Bearer"]
    expires_in: NullableSeconds
    scope: str


class Account(TypedDict):
    id: str
    name: str
    email: str


class GrantSummary(TypedDict):
    id: Annotated[str, WithJsonSchema({"type": "string", "format": "uuid"})]
    user: str
    provider: str
    status: GrantStatus
    reconnect_soon: Annotated[
        bool,
        Field(description="the refresh token expires soon regardless of use: reconnect"),
    ]
    account: Account
    scopes: list[str]
    resources: list[JsonObject]
    access_expires_at: NotRequired[NullableTime]
    last_used_at: NotRequired[NullableTime]


class GrantList(TypedDict):
    grants: Annotated[list[GrantSummary], Field(max_length=1000)]
    next: Annotated[
        str | None,
        WithJsonSchema(
            {
                "type": ["string", "null"],
                "format": "uri",
                "description": "The next page's URL; null on the last page",
            }
        ),
    ]


class AccessToken(TypedDict):
    access_token: str
    token_type: Literal["Bearer"]
    expires_at: NullableTime
    expires_in: NullableSeconds
    scopes: Annotated[list[str], Field(description="the scopes the returned token carries")]
    grant: Annotated[str, WithJsonSchema({"type": "string", "format": "uuid"})]
    account: Account
    resources: list[JsonObject]


class Signature(TypedDict):
    authorization: str


class ConnectLink(TypedDict):
    url: str
    expires_at: Time


class Ping(TypedDict):
    service: str
    scopes: list[str]


# --- JSON Schema ------------------------------------------------------------------------


class _PlainSchema(GenerateJsonSchema):
    """JSON Schema without the titles pydantic derives from Python names (noise to a
    reader of the API)."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def typed_dict_schema(self, schema: Any) -> JsonSchemaValue:
        json_schema = super().typed_dict_schema(schema)
        json_schema.pop("title", None)
        return json_schema


REF_TEMPLATE = "#/components/schemas/{model}"


def json_schema(adapter: TypeAdapter[Any]) -> dict[str, Any]:
    """The shape's JSON Schema; shapes it uses are referenced as OpenAPI components (their
    definitions under "$defs")."""
    return adapter.json_schema(ref_template=REF_TEMPLATE, schema_generator=_PlainSchema)


# --- validating a JSON body -------------------------------------------------------------

Shape = TypeVar("Shape")

# What a value must be, by its JSON Schema type, in an error description.
TYPE_NAMES = {
    "string": "a string",
    "integer": "an integer",
    "boolean": "a boolean",
    "array": "a list of strings",
}
# A length checked by the string type itself, or (for a narrower length added to a shared
# type) after its validators.
LENGTH_ERRORS = {"string_too_short", "string_too_long", "too_short", "too_long"}
# Field names are echoed in errors; an unknown one may be the size of the body.
MAX_ECHOED_NAME = 100


class JsonBody(Generic[Shape]):
    """A request body shape with its validator and JSON Schema, built once at import."""

    def __init__(self, shape: type[Shape]) -> None:
        self.adapter: TypeAdapter[Shape] = TypeAdapter(shape)
        self.json_schema = json_schema(self.adapter)
        self._properties: dict[str, dict[str, Any]] = self.json_schema["properties"]

    def validate(self, data: object) -> Shape:
        try:
            return self.adapter.validate_python(data)
        except ValidationError as exc:
            raise invalid_request(self._description(exc)) from None

    def _description(self, exc: ValidationError) -> str:
        """The first problem, in the words the API has always used: an unknown field first,
        then the fields in their declared order. Never the value itself."""
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        error = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        name = str(error["loc"][0]) if error["loc"] else ""
        field = repr(name[:MAX_ECHOED_NAME]) + ("..." if len(name) > MAX_ECHOED_NAME else "")
        kind = error["type"]
        if kind == "extra_forbidden":
            return f"unknown field {field}"
        if kind == "missing":
            return f"field {field} is required"
        if kind == "unicode":
            return f"field {field} must be valid Unicode text"
        if kind == "uuid":
            return f"field {field} must be a UUID"
        schema = self._properties[name]
        if kind == "greater_than_equal":
            return f"field {field} must be at least {schema['minimum']}"
        if schema["type"] == "string" and kind in LENGTH_ERRORS:
            return f"field {field} must be 1 to {schema['maxLength']} characters long"
        return f"field {field} must be {TYPE_NAMES[schema['type']]}"


ACCESS_TOKEN_BODY = JsonBody(AccessTokenRequest)
SIGN_BODY = JsonBody(SignRequest)
CONNECT_LINK_BODY = JsonBody(ConnectLinkRequest)


def json_object(request: HttpRequest) -> dict[str, Any]:
    """The request's body as a JSON object, parsed once per request (the grant cache reads
    it before the view); raises ApiError 400 (413, 415)."""
    parsed: dict[str, Any] | None = getattr(request, "parsed_json_object", None)
    if parsed is not None:
        return parsed
    content_type = request.content_type or ""
    if content_type != "application/json":
        raise ApiError(415, "invalid_request", "the body must be application/json")
    try:
        data = bounded_json.loads(request.body or b"null")
    except RequestDataTooBig:
        raise body_too_large() from None
    except bounded_json.JsonRefused as exc:
        if exc.too_large:
            raise body_too_large() from None
        raise invalid_request(f"the body is {exc}") from None
    if not isinstance(data, dict):
        raise invalid_request("the body must be a JSON object")
    request.parsed_json_object = data  # type: ignore[attr-defined]
    return data


def parse_json_body(request: HttpRequest, body: JsonBody[Shape]) -> Shape:
    """The request's JSON object, validated against `body`; raises ApiError 400 (413, 415)."""
    return body.validate(json_object(request))
