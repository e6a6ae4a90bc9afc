"""The SCIM 2.0 endpoints (RFC 7644 3), as Okta and Entra ID call them: Users and Groups
(create, get, list with `filter` and `startIndex`/`count`, replace, patch, delete) and the
discovery documents. Every answer is `application/scim+json`; every refusal a SCIM error."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from accounts.models import ScimConnection, ScimGroup, ScimUser
from accounts.scim import discovery, filters, patch, provisioning, resources, tokens
from accounts.scim.errors import ScimError, error_response, scim_response
from broker.infra import bounded_json

ScimView = Callable[..., HttpResponse]


def scim_endpoint(*methods: str) -> Callable[[ScimView], Callable[..., HttpResponse]]:
    """A machine endpoint: no CSRF, the IdP's bearer token required, `methods` only, and
    every ScimError answered as a SCIM error body. The view gets the connection."""

    def decorate(view: ScimView) -> Callable[..., HttpResponse]:
        @csrf_exempt
        @functools.wraps(view)
        def endpoint(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            try:
                connection = _authenticated(request)
                if request.method not in methods:
                    raise ScimError(405, f"{request.method} is not supported here.")
                return view(request, connection, *args, **kwargs)
            except ScimError as error:
                return error_response(error)

        return endpoint

    return decorate


def _authenticated(request: HttpRequest) -> ScimConnection:
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    connection = tokens.authenticated(presented.strip()) if scheme.lower() == "bearer" else None
    if connection is None:
        raise ScimError(401, "A valid SCIM bearer token is required.")
    return connection


def _body(request: HttpRequest) -> dict[str, Any]:
    try:
        body = bounded_json.loads(request.body, max_bytes=settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
    except RequestDataTooBig:  # over DATA_UPLOAD_MAX_MEMORY_SIZE, before it was read
        raise ScimError(413, "The body is too large.") from None
    except bounded_json.JsonRefused as refused:
        if refused.too_large:
            raise ScimError(413, "The body is too large.") from None
        raise ScimError(400, f"The body is {refused}.", "invalidSyntax") from None
    if not isinstance(body, dict):
        raise ScimError(400, "The body must be a JSON object.", "invalidSyntax")
    return body


def _page(request: HttpRequest) -> tuple[int, int]:
    """RFC 7644 3.4.2.4: `startIndex` is 1-based (below 1 means 1), `count` at least 0."""
    try:
        start = max(int(request.GET.get("startIndex", "1")), 1)
        count = min(
            max(int(request.GET.get("count", str(discovery.DEFAULT_COUNT))), 0), discovery.MAX_COUNT
        )
    except ValueError:
        raise ScimError(400, "startIndex and count must be integers.", "invalidValue") from None
    return start, count


def _list(
    request: HttpRequest, rows: QuerySet[Any], render: Callable[[Any], dict[str, Any]]
) -> HttpResponse:
    start, count = _page(request)
    total = rows.count()
    # A start past the end is an empty page, never an OFFSET the database cannot take.
    page = (
        list(rows.order_by("created_at", "pk")[start - 1 : start - 1 + count])
        if start <= total
        else []
    )
    return scim_response(
        {
            "schemas": [resources.LIST_SCHEMA],
            "totalResults": total,
            "startIndex": start,
            "itemsPerPage": len(page),
            "Resources": [render(row) for row in page],
        }
    )


def _excludes_members(request: HttpRequest) -> bool:
    excluded = request.GET.get("excludedAttributes", "")
    return "members" in {name.strip().lower() for name in excluded.split(",")}


# -- Users ---------------------------------------------------------------------------------

_USER_FILTERS = {"username": "user__username__iexact", "externalid": "external_id", "id": "pk"}


@scim_endpoint("GET", "POST")
def users(request: HttpRequest, connection: ScimConnection) -> HttpResponse:
    if request.method == "POST":
        created = provisioning.create_user(
            connection, resources.user_fields(_body(request)), request
        )
        return _user_answer(request, created, status=201)
    rows = resources.with_groups(ScimUser.objects.filter(connection=connection))
    if request.GET.get("filter"):
        for attribute, value in filters.equalities(request.GET["filter"], set(_USER_FILTERS)):
            rows = _matching(rows, _USER_FILTERS[attribute], value)
    return _list(request, rows, lambda row: resources.user_resource(request, row))


@scim_endpoint("GET", "PUT", "PATCH", "DELETE")
def user(request: HttpRequest, connection: ScimConnection, resource_id: str) -> HttpResponse:
    if request.method == "DELETE":
        provisioning.delete_user(connection, resource_id, request)
        return HttpResponse(status=204)
    if request.method == "PUT":
        replacement = resources.user_fields(_body(request))
        found = provisioning.update_user(connection, resource_id, request, replacement=replacement)
    elif request.method == "PATCH":
        operations = patch.operations(_body(request))
        found = provisioning.update_user(connection, resource_id, request, operations=operations)
    else:
        found = provisioning.user_of(connection, resource_id)
    return _user_answer(request, found)


def _user_answer(request: HttpRequest, scim_user: ScimUser, status: int = 200) -> HttpResponse:
    resource = resources.user_resource(request, scim_user)
    return scim_response(resource, status, Location=resource["meta"]["location"])


# -- Groups --------------------------------------------------------------------------------

_GROUP_FILTERS = {
    "displayname": "group__name",
    "externalid": "external_id",
    "id": "pk",
    "members": "group__user__scim__pk",
    "members.value": "group__user__scim__pk",
}


@scim_endpoint("GET", "POST")
def groups(request: HttpRequest, connection: ScimConnection) -> HttpResponse:
    if request.method == "POST":
        name, external_id, members = _group_document(_body(request))
        created = provisioning.create_group(connection, name, external_id, members, request)
        return _group_answer(request, created, status=201)
    rows = ScimGroup.objects.filter(connection=connection).select_related("group")
    if request.GET.get("filter"):
        for attribute, value in filters.equalities(request.GET["filter"], set(_GROUP_FILTERS)):
            rows = _matching(rows, _GROUP_FILTERS[attribute], value)
    with_members = not _excludes_members(request)
    return _list(
        request, rows.distinct(), lambda row: resources.group_resource(request, row, with_members)
    )


@scim_endpoint("GET", "PUT", "PATCH", "DELETE")
def group(request: HttpRequest, connection: ScimConnection, resource_id: str) -> HttpResponse:
    if request.method == "DELETE":
        provisioning.delete_group(connection, resource_id, request)
        return HttpResponse(status=204)
    if request.method == "PUT":
        replacement = _group_document(_body(request))
        found = provisioning.update_group(connection, resource_id, request, replacement=replacement)
    elif request.method == "PATCH":
        operations = patch.operations(_body(request))
        found = provisioning.update_group(connection, resource_id, request, operations=operations)
    else:
        found = provisioning.group_of(connection, resource_id)
    return _group_answer(request, found, with_members=not _excludes_members(request))


def _group_document(body: dict[str, Any]) -> tuple[str, str, set[str]]:
    name = resources.text(
        body.get("displayName"), "displayName", resources.NAME_MAX_LENGTH, required=True
    )
    external_id = resources.text(
        body.get("externalId"), "externalId", resources.EXTERNAL_ID_MAX_LENGTH
    )
    members, _ = patch.patched_members(
        set(), [patch.Operation("add", "members", body.get("members"))]
    )
    return name, external_id, members


def _group_answer(
    request: HttpRequest, scim_group: ScimGroup, status: int = 200, with_members: bool = True
) -> HttpResponse:
    resource = resources.group_resource(request, scim_group, with_members)
    return scim_response(resource, status, Location=resource["meta"]["location"])


def _matching(rows: QuerySet[Any], lookup: str, value: str | bool) -> QuerySet[Any]:
    """Rows where `lookup` equals `value`; an id that is not a UUID matches nothing."""
    if not isinstance(value, str):
        return rows.none()
    if lookup.endswith("pk"):
        try:
            uuid.UUID(value)
        except ValueError:
            return rows.none()
    return rows.filter(**{lookup: value})


# -- discovery (RFC 7644 4) ----------------------------------------------------------------


@scim_endpoint("GET")
def service_provider_config(request: HttpRequest, connection: ScimConnection) -> HttpResponse:
    return scim_response(discovery.service_provider_config(request))


@scim_endpoint("GET")
def resource_types(
    request: HttpRequest, connection: ScimConnection, name: str = ""
) -> HttpResponse:
    return scim_response(discovery.resource_types(request, name))


@scim_endpoint("GET")
def schemas(request: HttpRequest, connection: ScimConnection, urn: str = "") -> HttpResponse:
    return scim_response(discovery.schemas(request, urn))


@scim_endpoint("GET", "POST", "PUT", "PATCH", "DELETE")
def unknown(request: HttpRequest, connection: ScimConnection, rest: str) -> HttpResponse:
    raise ScimError(404, "No such SCIM endpoint.")
