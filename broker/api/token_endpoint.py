"""POST /api/v1/oauth/token: a service authenticates itself
(broker.service_identity.client_authentication) and gets a
broker token (client credentials, RFC 6749 4.4), or a user's provider token on that user's
behalf (token exchange, RFC 8693); errors per RFC 6749 5.2 and RFC 8693 2.2.2."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import BadRequest, RequestDataTooBig, SuspiciousOperation
from django.http import HttpRequest, HttpResponse, JsonResponse, QueryDict
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.debug import sensitive_post_parameters

from broker.api import grant_lookup, ratelimit, rules, subject_tokens
from broker.api.auth import BASIC_CHALLENGE, granted_by
from broker.api.decorators import audit_refusal, outages_answered
from broker.api.errors import (
    ApiError,
    api_token_grant,
    body_too_large,
    invalid_request,
    proxy_only,
)
from broker.api.schema import (
    CLIENT_CREDENTIALS,
    ISSUED_TOKEN_TYPE,
    SUBJECT_TOKEN_TYPES,
    TOKEN_EXCHANGE,
    TokenResponse,
)
from broker.api.serving import (
    DEFAULT_MIN_TTL,
    capped_min_ttl,
    expires_in,
    no_store,
    record_served,
    serve_token,
)
from broker.audit import trail
from broker.infra.client_address import client_ip
from broker.infra.lookup_text import matchable
from broker.infra.redis_connection import redis_client
from broker.models import ProviderApp
from broker.ops.database_busy import busy_response, is_database_busy
from broker.ops.error_pages import error_response
from broker.ops.logging_config import name_service
from broker.service_identity import tokens
from broker.service_identity.client_authentication import (
    AuthenticatedClient,
    ClientAuthFailed,
    MalformedClientAuthentication,
    authenticate_client,
)

log = logging.getLogger(__name__)


def _form(request: HttpRequest) -> dict[str, str]:
    """The token request's parameters (RFC 6749 3.2: form-encoded, no repeats)."""
    if request.content_type != "application/x-www-form-urlencoded":
        raise invalid_request("the body must be application/x-www-form-urlencoded")
    if request.GET:
        raise invalid_request("parameters belong in the body, not the query string")
    try:
        params: QueryDict = request.POST
    except RequestDataTooBig:
        raise body_too_large() from None
    except (SuspiciousOperation, BadRequest):  # too many parameters, a charset not UTF-8
        raise invalid_request("the body cannot be read as form parameters") from None
    form: dict[str, str] = {}
    for name, values in params.lists():
        if len(values) > 1:
            raise invalid_request(f"parameter {name!r} is repeated")
        if values[0] != "":  # RFC 6749 3.1: a parameter without a value is omitted
            form[name] = values[0]
    return form


def _granted_api_scopes(service_id: Any, requested: str | None) -> tuple[str, ...]:
    can_sign, can_link = rules.service_capabilities(service_id)
    allowed = [
        s
        for s in tokens.API_SCOPES
        if (s != "requests:sign" or can_sign) and (s != "connect-links:create" or can_link)
    ]
    if requested is None:
        return tuple(allowed)
    wanted = requested.split()
    unknown = [s for s in wanted if s not in allowed]
    if unknown or not wanted:
        raise ApiError(
            400,
            "invalid_scope",
            f"scopes not available to this client: {' '.join(unknown) or '(empty)'}; "
            f"available: {' '.join(allowed)}" + "".join(granted_by(s) for s in unknown[:1]),
        )
    return tuple(s for s in allowed if s in wanted)


@csrf_exempt
@sensitive_post_parameters("client_secret", "client_assertion", "subject_token")
@outages_answered
def token_endpoint(request: HttpRequest) -> HttpResponse:
    """Client credentials grant (RFC 6749 4.4) and token exchange (RFC 8693); errors per
    RFC 6749 5.2 and RFC 8693 2.2.2."""
    if request.method != "POST":
        return error_response(405, "invalid_request", "use POST", {"Allow": "POST"})
    client_id = ""  # set once the client is authenticated
    address = client_ip(request)
    try:
        form = _form(request)
        grant_type = form.get("grant_type")
        if grant_type is None:
            raise invalid_request("grant_type is required")
        if grant_type not in (CLIENT_CREDENTIALS, TOKEN_EXCHANGE):
            raise ApiError(
                400,
                "unsupported_grant_type",
                f"the grant types supported are {CLIENT_CREDENTIALS} and {TOKEN_EXCHANGE}",
            )
        try:
            client = authenticate_client(
                request,
                form,
                before_checking=lambda claimed: ratelimit.check_failures(
                    "client", claimed, address
                ),
            )
        except MalformedClientAuthentication as exc:
            raise invalid_request(str(exc)) from None
        client_id = client.service.client_id
        name_service(request, client_id)
        if grant_type == CLIENT_CREDENTIALS:
            scopes = _granted_api_scopes(client.service.pk, form.get("scope"))
        pipe = redis_client().pipeline(transaction=False)
        ratelimit.queue_count(pipe, client_id)
        count, _ = pipe.execute()
        if ratelimit.exceeded(count):
            raise ApiError(
                429,
                "rate_limited",
                "too many requests from this client; retry later",
                {"Retry-After": str(ratelimit.retry_after())},
            )
    except ratelimit.Throttled as exc:
        return no_store(exc.response())
    except ClientAuthFailed as exc:
        if ratelimit.count_failure("client", exc.client_id, address):
            return no_store(ratelimit.Throttled().response())
        trail.service_event(
            "service.auth_failed",
            exc.client_id,
            outcome=trail.Outcome.DENIED,
            request=request,
            reason=exc.reason,
            method=exc.method,
        )
        return no_store(
            error_response(
                401,
                "invalid_client",
                "client authentication failed",
                {"WWW-Authenticate": BASIC_CHALLENGE},
            )
        )
    except ApiError as exc:
        # Malformed requests before authentication count toward the throttle too.
        if not client_id and ratelimit.count_failure("client", "", address):
            return no_store(ratelimit.Throttled().response())
        trail.service_event(
            "service.auth_failed",
            client_id,
            outcome=trail.Outcome.DENIED,
            request=request,
            reason=exc.error,
            description=exc.description,
        )
        return no_store(exc.response())
    if grant_type == TOKEN_EXCHANGE:
        return no_store(_exchange_or_refusal(request, client, form))
    access_token, expires_in = tokens.issue(client.service, scopes, not_after=client.not_after)
    trail.service_event(
        "service.authenticated",
        client_id,
        request=request,
        method=client.method,
        api_scopes=list(scopes),
        expires_in=expires_in,
    )
    answer: TokenResponse = {
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": expires_in,
        "scope": " ".join(scopes),
    }
    return no_store(JsonResponse(answer))


# --- token exchange (RFC 8693): acting on behalf of a signed-in user --------------------

RESOURCE_PREFIX = "urn:broker:provider:"


def _target_slug(form: dict[str, str]) -> str:
    """The provider app named by `audience=<slug>` or `resource=urn:broker:provider:<slug>`."""
    audience, resource = form.get("audience"), form.get("resource")
    if audience and resource:
        raise invalid_request("give either 'audience' or 'resource', not both")
    if resource:
        if not resource.startswith(RESOURCE_PREFIX):
            raise ApiError(
                400, "invalid_target", f"'resource' must be {RESOURCE_PREFIX}<provider app slug>"
            )
        return resource[len(RESOURCE_PREFIX) :]
    if not audience:
        raise invalid_request("'audience' (the provider app's slug) or 'resource' is required")
    return audience


def _exchange(
    request: HttpRequest, client: AuthenticatedClient, form: dict[str, str]
) -> TokenResponse:
    """The provider access token of the user the subject token names (RFC 8693 2.2.1)."""
    service = client.service
    token_type = form.get("subject_token_type")
    if not form.get("subject_token") or token_type is None:
        raise invalid_request("'subject_token' and 'subject_token_type' are required")
    if token_type not in SUBJECT_TOKEN_TYPES:
        raise invalid_request(f"subject_token_type must be one of {', '.join(SUBJECT_TOKEN_TYPES)}")
    if (
        "actor_token" in form
        or "requested_token_type" in form
        and (form["requested_token_type"] != ISSUED_TOKEN_TYPE)
    ):
        raise invalid_request(f"only {ISSUED_TOKEN_TYPE} is issued, without an actor_token")
    slug = _target_slug(form)
    subject = subject_tokens.subject_for_service(
        service.pk, form["subject_token"], named="subject_token"
    )
    on_behalf: dict[str, Any] = {
        "subject_user": subject.user.username,
        "provider": slug,
        "subject_issuer": subject.issuer,
    }
    app = ProviderApp.objects.filter(slug=slug).first() if matchable(slug) else None
    permission = rules.permission(service.pk, app, subject.user) if app else None
    if app is None or permission is None:
        raise ApiError(
            400,
            "invalid_target",
            f"this service may not use {slug!r} for this user",
            **on_behalf,
        )
    if permission.proxy_only:
        raise proxy_only(app.slug, subject_user=subject.user.username)
    grant = grant_lookup.users_grant(subject.user.username, app.slug)
    if grant is None:
        raise ApiError(400, "invalid_target", f"the user has no grant of {slug!r}", **on_behalf)
    if app.protocol == "api_token":
        raise api_token_grant(**on_behalf)
    if app.protocol != "oauth2":
        raise ApiError(
            400,
            "invalid_target",
            f"{slug!r} is an OAuth 1.0a app: use /api/v1/sign with Broker-Subject-Token",
            **on_behalf,
        )
    requested = form["scope"].split() if "scope" in form else None
    min_ttl = capped_min_ttl(DEFAULT_MIN_TTL, grant)
    grant, token, expires_at, scopes = serve_token(
        grant, permission, requested, min_ttl, force_refresh=False
    )
    record_served(
        request,
        service.pk,
        service.client_id,
        grant,
        "token.exchanged",
        "exchanged",
        scopes=scopes,
        on_behalf_of=True,
        subject_issuer=subject.issuer,
        subject_token_type=token_type,
    )
    return {
        "access_token": token,
        "issued_token_type": ISSUED_TOKEN_TYPE,
        "token_type": "Bearer",
        "expires_in": expires_in(expires_at),
        "scope": " ".join(scopes),
    }


def _exchange_or_refusal(
    request: HttpRequest, client: AuthenticatedClient, form: dict[str, str]
) -> HttpResponse:
    try:
        return JsonResponse(_exchange(request, client, form))
    except ApiError as exc:
        audit_refusal("token.exchange_denied", client.service.client_id, request, exc)
        return exc.response()
    except Exception as exc:
        if is_database_busy(exc):
            return busy_response(request)
        log.exception("token exchange failed")
        return error_response(500, "server_error", "the broker failed; try again later")
