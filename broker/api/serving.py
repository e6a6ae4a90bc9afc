"""The serving endpoints of the internal API (/api/v1/): access tokens, signatures, the
grants list, connect links, ping and the OpenAPI document (the token endpoint is
broker.api.token_endpoint). Views validate and orchestrate; the rules, tokens and refresh
logic live in their own modules."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, overload

import redis
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from accounts.models import User
from broker.api import (
    grant_lookup,
    pagination,
    rules,
    subject_tokens,
)
from broker.api.auth import (
    ServiceRequest,
)
from broker.api.decorators import api_view
from broker.api.errors import (
    ApiError,
    api_token_grant,
    invalid_request,
    not_visible,
    proxy_only,
)
from broker.api.openapi import openapi_document
from broker.api.refusals import REFRESH_REFUSALS, refresh_refusal, require_live
from broker.api.schema import (
    ACCESS_TOKEN_BODY,
    CONNECT_LINK_BODY,
    SIGN_BODY,
    AccessToken,
    Account,
    ConnectLink,
    GrantList,
    GrantListQuery,
    GrantNamed,
    GrantSummary,
    Ping,
    Signature,
    parse_json_body,
)
from broker.audit import trail
from broker.consent import connect_links
from broker.consent.return_urls import safe_return_url
from broker.infra.lookup_text import matchable
from broker.infra.shared_round_trip import shared_round_trip
from broker.models import Grant, ProviderApp
from broker.ops import metrics
from broker.ops.error_pages import error_response
from broker.providers import oauth1_signing
from broker.refresh import on_demand
from broker.refresh.doubt_marks import stored_token_in_doubt

log = logging.getLogger(__name__)

DEFAULT_MIN_TTL = 60
MAX_MIN_TTL_MARGIN = 30


def no_store(response: HttpResponse) -> HttpResponse:
    response["Cache-Control"] = "no-store"
    response["Pragma"] = "no-cache"
    return response


# --- grants ----------------------------------------------------------------------------


def _account(grant: Grant) -> Account:
    return {
        "id": grant.external_account_id,
        "name": grant.account_name,
        "email": grant.account_email,
    }


@overload
def _iso(moment: datetime) -> str: ...
@overload
def _iso(moment: datetime | None) -> str | None: ...
def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@api_view("GET", scope="grants:read", denied="token.denied")
def list_grants(request: ServiceRequest) -> HttpResponse:
    """The grants this service may see, never their tokens; a page at a time (`limit`,
    `cursor`), with the next page's URL in `next`."""
    allowed = GrantListQuery.__required_keys__ | GrantListQuery.__optional_keys__
    for name, values in request.GET.lists():
        if name not in allowed:
            raise invalid_request(f"unknown query parameter {name!r}")
        if len(values) > 1:
            raise invalid_request(f"query parameter {name!r} is repeated")
    grants = rules.visible_grants(request.broker_token.service_id).select_related(
        "user", "provider_app"
    )
    if user := request.GET.get("user"):
        grants = grants.filter(user__username=user)
    if provider := request.GET.get("provider"):
        grants = grants.filter(provider_app__slug=provider)
    if "status" in request.GET:
        status = request.GET["status"]
        if status not in Grant.Status.values:
            raise invalid_request(
                f"query parameter 'status' must be one of {', '.join(Grant.Status.values)}"
            )
        grants = grants.filter(status=status)
    rows, next_page = pagination.page(
        request, grants, limit=pagination.page_limit(request.GET.get("limit"))
    )
    body: list[GrantSummary] = [
        {
            "id": str(grant.pk),
            "user": grant.user.username,
            "provider": grant.provider_app.slug,
            "status": grant.status,
            # The refresh token's absolute lifetime ends soon: the user must consent again.
            "reconnect_soon": grant.needs_reconnect_soon,
            "account": _account(grant),
            "scopes": grant.scopes,
            "resources": grant.resources,
            "access_expires_at": _iso(grant.access_expires_at),
            "last_used_at": _iso(grant.last_used_at),
        }
        for grant in rows
    ]
    answer: GrantList = {"grants": body, "next": next_page}
    return no_store(JsonResponse(answer))


def _find_grant(request: ServiceRequest, body: GrantNamed) -> tuple[Grant, rules.Permission]:
    """The grant named by `grant` or by `user` + `provider`, if this service may see it."""
    if "grant" in body:
        if "user" in body or "provider" in body:
            raise invalid_request("give either 'grant', or 'user' and 'provider'")
        grant = grant_lookup.grant_by_id(body["grant"])
        wanted: dict[str, Any] = {"grant_id": body["grant"]}
    elif "user" in body and "provider" in body and not matchable(body["user"], body["provider"]):
        grant = None
        wanted = {"subject_user": repr(body["user"]), "provider": repr(body["provider"])}
    elif "user" in body and "provider" in body:
        grant = grant_lookup.users_grant(body["user"], body["provider"])
        wanted = {"subject_user": body["user"], "provider": body["provider"]}
    else:
        raise invalid_request("give either 'grant', or 'user' and 'provider'")
    if grant is None:
        raise not_visible(**wanted)
    concerning: dict[str, Any] = {
        "grant_id": grant.pk,
        "subject_user": grant.user.username,
        "provider": grant.provider_app.slug,
    }
    permission = rules.permission(request.broker_token.service_id, grant.provider_app, grant.user)
    if permission is None:
        raise not_visible(**concerning)
    return grant, permission


def _token_scopes(
    grant: Grant, permission: rules.Permission, requested: list[str] | None
) -> tuple[list[str], list[str]]:
    """(the scopes the grant's token carries, as the provider reported them; those of them
    the service's rules do not allow).

    What the service asks for must lie inside its rules and the grant (403 otherwise); it
    never widens nor narrows the token. A rule's scopes are a promise, not a label: a
    token carrying a scope the rules do not allow is never handed out (see `_too_wide`).
    """
    concerning: dict[str, Any] = {"grant_id": grant.pk, "provider": grant.provider_app.slug}
    if requested is not None:
        _refuse_beyond_rules(requested, permission, concerning)
        beyond_grant = sorted(set(requested) - set(grant.scopes))
        if beyond_grant:
            raise ApiError(
                403,
                "insufficient_scope",
                f"the user's grant lacks the scopes: {' '.join(beyond_grant)} "
                "(the user must connect again with them, e.g. through a connect link)",
                scopes=requested,
                **concerning,
            )
    carried = sorted(set(grant.scopes))
    return carried, sorted(set(carried) - permission.scopes)


def _too_wide(grant: Grant, carried: list[str], beyond_rule: list[str], why: str) -> ApiError:
    return ApiError(
        403,
        "insufficient_scope",
        f"the user's token carries scopes this service's access rules do not allow: "
        f"{' '.join(beyond_rule)} ({why}; an admin may allow them in the rule)",
        scopes=carried,
        grant_id=grant.pk,
        provider=grant.provider_app.slug,
    )


def _refuse_beyond_rules(
    requested: list[str], permission: rules.Permission, concerning: dict[str, Any]
) -> None:
    """403 `insufficient_scope` for asked scopes the service's access rules do not allow."""
    beyond = sorted(set(requested) - permission.scopes)
    if beyond:
        raise ApiError(
            403,
            "insufficient_scope",
            f"this service's access rules do not allow the scopes: {' '.join(beyond)}",
            scopes=requested,
            **concerning,
        )


def capped_min_ttl(requested: int, grant: Grant) -> int:
    """min_ttl is capped to the provider's token lifetime minus a small margin, otherwise a
    provider with short-lived tokens would be asked for a refresh on every request."""
    lifetime = float(grant.provider_app.catalog_entry.default_access_token_seconds)
    started = grant.last_refreshed_at or grant.consented_at
    if grant.access_expires_at and started and grant.access_expires_at > started:
        lifetime = (grant.access_expires_at - started).total_seconds()
    margin = min(MAX_MIN_TTL_MARGIN, lifetime / 2)
    return max(0, min(requested, int(lifetime - margin)))


def record_served(
    request: HttpRequest,
    service_id: Any,
    client_id: str,
    grant: Grant,
    action: str,
    counted_as: str,
    **detail: Any,
) -> None:
    """Records that the service got a token or signature for `grant`: the audit event,
    committed before the answer is sent, the last use, and the broker_token_issues metric
    with the outcome `counted_as`."""
    grant_lookup.note_use(grant, service_id)
    trail.service_event(
        action,
        client_id,
        request=request,
        grant_id=grant.pk,
        subject_user=grant.user.username,
        provider=grant.provider_app.slug,
        **detail,
    )
    try:
        # Shared with the other answers of the moment (a burst of waiters on one refresh).
        shared_round_trip().execute(
            lambda pipe: metrics.queue_token_issue(pipe, client_id, counted_as)
        )
    except redis.RedisError as exc:
        log.warning("metrics: token issue not counted (%s)", type(exc).__name__)


def _record_served_to_caller(
    request: ServiceRequest, grant: Grant, action: str, counted_as: str, **detail: Any
) -> None:
    """record_served for the service whose broker token made `request`."""
    service = request.broker_token
    record_served(
        request, service.service_id, service.client_id, grant, action, counted_as, **detail
    )


def _fresh(grant: Grant, min_ttl: int, force_refresh: bool) -> Grant:
    """The stored token when it lasts min_ttl; otherwise the refresh engine's single flight.

    A response rescued to Redis (its database write failed), or a refresh in flight or cut
    short, means the stored tokens may be superseded at the provider: then the engine
    waits for the refresh, or applies or redoes it, first."""
    if (
        not force_refresh
        and grant.access_token_valid_for(min_ttl)
        and not stored_token_in_doubt(grant)
    ):
        return grant
    try:
        return on_demand.ensure_fresh(
            grant.pk, min_ttl=min_ttl, force_refresh=force_refresh, as_read=grant
        )
    except REFRESH_REFUSALS as exc:
        raise refresh_refusal(grant, exc) from None


def _stored_token(grant: Grant) -> tuple[str, datetime | None]:
    """The grant's access token and its expiry, as `_fresh` left them."""
    token = grant.unseal("access_token") if grant.status == Grant.Status.ACTIVE else None
    if not token:
        require_live(grant)
        raise ApiError(
            503,
            "temporarily_unavailable",
            "no valid token is available right now; retry later",
            {"Retry-After": "5"},
            grant_id=grant.pk,
        )
    return token, grant.access_expires_at


def serve_token(
    grant: Grant,
    permission: rules.Permission,
    requested: list[str] | None,
    min_ttl: int,
    force_refresh: bool,
) -> tuple[Grant, str, datetime | None, list[str]]:
    """(grant, token, expiry, scopes): a token of the OAuth 2.0 grant that carries only
    scopes the rules allow, refreshed (single flight) when needed."""
    carried, beyond_rule = _token_scopes(grant, permission, requested)
    if beyond_rule:
        # Refused before any refresh: no built-in provider can issue a narrower token
        # without shrinking the grant every other service relies on.
        raise _too_wide(grant, carried, beyond_rule, "the provider cannot issue a narrower token")
    require_live(grant)
    grant = _fresh(grant, min_ttl, force_refresh)
    token, expires_at = _stored_token(grant)
    # A refresh may have changed what the token carries: checked again on what is served.
    scopes, beyond_rule = _token_scopes(grant, permission, requested)
    if beyond_rule:
        raise _too_wide(grant, scopes, beyond_rule, "the refreshed token carries more")
    return grant, token, expires_at, scopes


def expires_in(expires_at: datetime | None) -> int | None:
    if expires_at is None:
        return None
    return max(0, int((expires_at - timezone.now()).total_seconds()))


def _on_behalf_of_required(grant: Grant) -> ApiError:
    return ApiError(
        403,
        "on_behalf_of_required",
        f"this service may use {grant.user.username}'s {grant.provider_app.slug!r} grant only "
        "on the user's behalf: present the user's token (token exchange at "
        "/api/v1/oauth/token, or the Broker-Subject-Token header)",
        grant_id=grant.pk,
        subject_user=grant.user.username,
        provider=grant.provider_app.slug,
    )


@api_view("POST", scope="tokens:read", denied="token.denied")
def access_token(request: ServiceRequest) -> HttpResponse:
    """A valid access token of a user's OAuth 2.0 grant, refreshed if needed (single flight)."""
    body = parse_json_body(request, ACCESS_TOKEN_BODY)
    force_refresh = body.get("force_refresh", False)
    grant, permission = _find_grant(request, body)
    if permission.proxy_only:
        raise proxy_only(grant.provider_app.slug, grant_id=grant.pk)
    if permission.on_behalf_of_only:
        raise _on_behalf_of_required(grant)
    if grant.provider_app.protocol == "api_token":
        raise api_token_grant(grant_id=grant.pk, provider=grant.provider_app.slug)
    if grant.provider_app.protocol != "oauth2":
        raise invalid_request("this is an OAuth 1.0a grant: use /api/v1/sign")
    min_ttl = capped_min_ttl(body.get("min_ttl", DEFAULT_MIN_TTL), grant)
    grant, token, expires_at, scopes = serve_token(
        grant, permission, body.get("scopes"), min_ttl, force_refresh
    )
    _record_served_to_caller(
        request,
        grant,
        "token.issued",
        "issued",
        scopes=scopes,
        min_ttl=min_ttl,
        force_refresh=force_refresh,
    )
    answer: AccessToken = {
        "access_token": token,
        "token_type": "Bearer",
        "expires_at": _iso(expires_at),
        "expires_in": expires_in(expires_at),
        "scopes": scopes,
        "grant": str(grant.pk),
        "account": _account(grant),
        "resources": grant.resources,
    }
    return no_store(JsonResponse(answer))


@api_view("POST", scope="requests:sign", denied="token.denied")
def sign(request: ServiceRequest) -> HttpResponse:
    """The OAuth 1.0a Authorization header for exactly one request (RFC 5849 3)."""
    body = parse_json_body(request, SIGN_BODY)
    grant, permission = _find_grant(request, body)
    concerning: dict[str, Any] = {"grant_id": grant.pk, "provider": grant.provider_app.slug}
    on_behalf: dict[str, Any] = {}
    if subject_token := request.META.get(subject_tokens.HEADER):
        subject = subject_tokens.subject_for_service(
            request.broker_token.service_id, subject_token, named="subject_token"
        )
        if subject.user.pk != grant.user_id:
            raise not_visible(**concerning, subject_issuer=subject.issuer)
        on_behalf = {"on_behalf_of": True, "subject_issuer": subject.issuer}
    elif permission.on_behalf_of_only:
        raise _on_behalf_of_required(grant)
    if permission.proxy_only:
        raise proxy_only(grant.provider_app.slug, grant_id=grant.pk)
    if not permission.can_sign:
        raise ApiError(
            403,
            "access_denied",
            f"no access rule lets this service sign requests for {grant.provider_app.slug!r}",
            **concerning,
        )
    if grant.provider_app.protocol == "api_token":
        raise api_token_grant(**concerning)
    if grant.provider_app.protocol != "oauth1":
        raise invalid_request("this is an OAuth 2.0 grant: use /api/v1/access-token")
    require_live(grant)
    try:
        header = oauth1_signing.sign_request(
            grant,
            method=body["method"],
            url=body["url"],
            body=body.get("body"),
            content_type=body.get("content_type"),
        )
    except oauth1_signing.GrantNotActive as exc:
        raise ApiError(409, "reconnect_required", str(exc), **concerning) from None
    except oauth1_signing.SigningError as exc:
        raise ApiError(400, "invalid_request", str(exc), **concerning) from None
    _record_served_to_caller(
        request,
        grant,
        "request.signed",
        "signed",
        method=body["method"].upper(),
        # The path only: query strings can carry secrets of their own.
        path=body["url"].split("?", 1)[0],
        **on_behalf,
    )
    answer: Signature = {"authorization": header}
    return no_store(JsonResponse(answer))


@api_view("POST", scope="connect-links:create", denied="connect_link.denied")
def create_connect_link(request: ServiceRequest) -> HttpResponse:
    """A single-use, expiring link that sends one user through consent, then to return_to."""
    body = parse_json_body(request, CONNECT_LINK_BODY)
    wanted: dict[str, Any] = {"subject_user": body["user"], "provider": body["provider"]}
    if not matchable(body["user"], body["provider"]):
        raise not_visible(subject_user=repr(body["user"]), provider=repr(body["provider"]))
    user = User.objects.filter(username=body["user"], is_active=True).first()
    app = ProviderApp.objects.filter(slug=body["provider"]).first()
    if user is None or app is None:
        raise not_visible(**wanted)
    permission = rules.permission(request.broker_token.service_id, app, user)
    if permission is None:
        raise not_visible(**wanted)
    if not permission.can_create_connect_links:
        raise ApiError(
            403,
            "access_denied",
            f"no access rule lets this service create connect links for {app.slug!r}: "
            f"its rule for {app.slug!r} needs --connect-links (`manage.py addaccessrule "
            f"CLIENT_ID --provider {app.slug} --connect-links`)",
            **wanted,
        )
    requested = body.get("scopes")
    if requested is not None:
        _refuse_beyond_rules(requested, permission, wanted)
    if not safe_return_url(body["return_to"]):
        raise invalid_request("field 'return_to' must be on an allow-listed origin")
    service = request.broker_token
    url, link = connect_links.create(
        service_id=service.service_id,
        user=user,
        app=app,
        scopes=sorted(set(requested)) if requested is not None else [],
        return_to=body["return_to"],
    )
    trail.service_event(
        "connect_link.created",
        service.client_id,
        subject_user=user.username,
        provider=app.slug,
        scopes=link.scopes,
        request=request,
        link=str(link.pk),
    )
    answer: ConnectLink = {"url": url, "expires_at": _iso(link.expires_at)}
    return no_store(JsonResponse(answer, status=201))


@api_view("GET")
def ping(request: ServiceRequest) -> HttpResponse:
    """Checks a broker token; the same wrapper as every endpoint (the benchmark baseline)."""
    token = request.broker_token
    answer: Ping = {"service": token.client_id, "scopes": list(token.scopes)}
    return no_store(JsonResponse(answer))


@api_view("GET", authenticated=False)
def openapi(request: HttpRequest) -> HttpResponse:
    return JsonResponse(openapi_document())


@csrf_exempt
def not_found(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    return error_response(404, "not_found", "no such API endpoint")
