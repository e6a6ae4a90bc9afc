"""What the service provider supports (RFC 7644 4, RFC 7643 5-7): ServiceProviderConfig,
ResourceTypes and Schemas, with the attributes the broker keeps."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from accounts.scim.errors import ScimError
from accounts.scim.resources import GROUP_SCHEMA, LIST_SCHEMA, USER_SCHEMA, location

CONFIG_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"
RESOURCE_TYPE_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:ResourceType"
SCHEMA_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Schema"
# Pages of lists (RFC 7644 3.4.2.4): `count` when none is asked, and the most per page.
DEFAULT_COUNT = 100
MAX_COUNT = 200


def service_provider_config(request: HttpRequest) -> dict[str, Any]:
    return {
        "schemas": [CONFIG_SCHEMA],
        "documentationUri": "https://datatracker.ietf.org/doc/html/rfc7644",
        "patch": {"supported": True},
        "bulk": {"supported": False, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": True, "maxResults": MAX_COUNT},
        "changePassword": {"supported": False},
        "sort": {"supported": False},
        "etag": {"supported": False},
        "authenticationSchemes": [
            {
                "type": "oauthbearertoken",
                "name": "Bearer token",
                "description": "The token from `manage.py createscimtoken NAME`.",
                "primary": True,
            }
        ],
        "meta": {
            "resourceType": "ServiceProviderConfig",
            "location": request.build_absolute_uri("/scim/v2/ServiceProviderConfig"),
        },
    }


def _attribute(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "string",
        "multiValued": False,
        "required": False,
        "caseExact": False,
        "mutability": "readWrite",
        "returned": "default",
        "uniqueness": "none",
        **extra,
    }


_MEMBER = [
    _attribute("value", mutability="immutable"),
    _attribute("display", mutability="readOnly"),
]

SCHEMAS: dict[str, dict[str, Any]] = {
    USER_SCHEMA: {
        "id": USER_SCHEMA,
        "name": "User",
        "description": "A broker user; signs in by single sign-on with this userName.",
        "attributes": [
            _attribute("userName", required=True, uniqueness="server"),
            _attribute("externalId", caseExact=True),
            _attribute(
                "name",
                type="complex",
                subAttributes=[_attribute("givenName"), _attribute("familyName")],
            ),
            _attribute("displayName", mutability="readOnly"),
            _attribute("active", type="boolean"),
            _attribute(
                "emails",
                type="complex",
                multiValued=True,
                subAttributes=[
                    _attribute("value"),
                    _attribute("type"),
                    _attribute("primary", type="boolean"),
                ],
            ),
            _attribute(
                "groups",
                type="complex",
                multiValued=True,
                mutability="readOnly",
                subAttributes=_MEMBER,
            ),  # fmt: skip
        ],
    },
    GROUP_SCHEMA: {
        "id": GROUP_SCHEMA,
        "name": "Group",
        "description": "A broker group: access rules with `group:NAME` follow it.",
        "attributes": [
            _attribute("displayName", required=True, uniqueness="server"),
            _attribute("externalId", caseExact=True),
            _attribute("members", type="complex", multiValued=True, subAttributes=_MEMBER),
        ],
    },
}

RESOURCE_TYPES = {
    "User": {"endpoint": "/Users", "schema": USER_SCHEMA, "description": "Broker users"},
    "Group": {"endpoint": "/Groups", "schema": GROUP_SCHEMA, "description": "Broker groups"},
}


def _listed(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "schemas": [LIST_SCHEMA],
        "totalResults": len(resources),
        "startIndex": 1,
        "itemsPerPage": len(resources),
        "Resources": resources,
    }


def _resource_type(request: HttpRequest, name: str) -> dict[str, Any]:
    return {
        "schemas": [RESOURCE_TYPE_SCHEMA],
        "id": name,
        "name": name,
        **RESOURCE_TYPES[name],
        "meta": {
            "resourceType": "ResourceType",
            "location": location(request, "ResourceTypes", name),
        },
    }


def resource_types(request: HttpRequest, name: str) -> dict[str, Any]:
    if not name:
        return _listed([_resource_type(request, known) for known in RESOURCE_TYPES])
    if name not in RESOURCE_TYPES:
        raise ScimError(404, "No such resource type.")
    return _resource_type(request, name)


def _schema(request: HttpRequest, urn: str) -> dict[str, Any]:
    return {
        "schemas": [SCHEMA_SCHEMA],
        **SCHEMAS[urn],
        "meta": {"resourceType": "Schema", "location": location(request, "Schemas", urn)},
    }


def schemas(request: HttpRequest, urn: str) -> dict[str, Any]:
    if not urn:
        return _listed([_schema(request, known) for known in SCHEMAS])
    if urn not in SCHEMAS:
        raise ScimError(404, "No such schema.")
    return _schema(request, urn)
