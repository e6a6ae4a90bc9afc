"""Client authentication at the token endpoint (RFC 6749 2.3): `client_secret_basic`,
`client_secret_post`, RFC 7523 `private_key_jwt`, or an app token from a trusted identity
provider (broker.service_identity.federation). Exactly one method per request.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote_plus

from django.http import HttpRequest

from broker.infra.lookup_text import matchable
from broker.models import ServiceClient
from broker.service_identity import client_assertions, federation, service_secrets


class MalformedClientAuthentication(Exception):
    """RFC 6749 5.2 invalid_request: the request's client authentication is malformed (the
    message says how; it is shown to the caller)."""


@dataclass(frozen=True)
class AuthenticatedClient:
    service: ServiceClient
    method: str
    # A secret in its grace period yields tokens that do not outlive the grace.
    not_after: float | None = None


class ClientAuthFailed(Exception):
    """RFC 6749 5.2 invalid_client; `reason` goes to the audit log, never to the caller."""

    def __init__(self, reason: str, client_id: str = "", method: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.client_id = client_id
        self.method = method


def _basic_credentials(request: HttpRequest) -> tuple[str, str] | None:
    """RFC 6749 2.3.1: client id and secret, each form-urlencoded, in HTTP Basic."""
    scheme, _, value = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ClientAuthFailed(
            "malformed basic credentials", method="client_secret_basic"
        ) from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise ClientAuthFailed("malformed basic credentials", method="client_secret_basic")
    return unquote_plus(client_id), unquote_plus(secret)


def _lookup(client_id: str) -> ServiceClient | None:
    if not client_id or len(client_id) > 64 or not matchable(client_id):
        return None
    return ServiceClient.objects.filter(client_id=client_id).first()


def _service(client_id: str, method: str) -> ServiceClient:
    service = _lookup(client_id)
    if service is None:
        raise ClientAuthFailed("unknown client", client_id, method)
    if not service.enabled:
        raise ClientAuthFailed("client disabled", client_id, method)
    return service


def _by_secret(client_id: str, secret: str, method: str) -> AuthenticatedClient:
    service = _lookup(client_id)
    # A digest is computed for unknown clients too, so timing does not reveal client ids.
    matched = service_secrets.matched_secret(service or ServiceClient(), secret)
    if service is None:
        raise ClientAuthFailed("unknown client", client_id, method)
    if not service.enabled:
        raise ClientAuthFailed("client disabled", client_id, method)
    if matched is None:
        raise ClientAuthFailed("wrong or expired secret", client_id, method)
    not_after = None
    if matched == "previous" and service.previous_secret_valid_until is not None:
        not_after = service.previous_secret_valid_until.timestamp()
    return AuthenticatedClient(service, method, not_after)


def _claimed_client_id(basic: tuple[str, str] | None, form: dict[str, str]) -> str:
    """Who the caller says it is, before any check: what the failure throttle counts."""
    if basic is not None:
        return basic[0]
    if form.get("client_id"):
        return form["client_id"]
    assertion = form.get("client_assertion", "")
    if federation.is_federated(assertion):
        return ""  # its iss is the identity provider, shared by all its applications
    try:
        return client_assertions.claimed_client_id(assertion)
    except client_assertions.AssertionRejected:
        return ""


def authenticate_client(
    request: HttpRequest, form: dict[str, str], *, before_checking: Callable[[str], None]
) -> AuthenticatedClient:
    """Exactly one client authentication method per request (RFC 6749 2.3). Raises
    ClientAuthFailed (invalid_client) or MalformedClientAuthentication (invalid_request).
    `before_checking(claimed client id)` runs before any credential is checked: the token
    endpoint's failure throttle, which may raise to refuse the caller."""
    basic = _basic_credentials(request)
    assertion_type = form.get("client_assertion_type")
    methods = [
        name
        for name, present in (
            ("client_secret_basic", basic is not None),
            ("client_secret_post", "client_secret" in form),
            ("private_key_jwt", assertion_type is not None or "client_assertion" in form),
        )
        if present
    ]
    if len(methods) > 1:
        raise MalformedClientAuthentication("use exactly one client authentication method")
    if not methods:
        raise ClientAuthFailed("no client authentication")
    method = methods[0]
    before_checking(_claimed_client_id(basic, form))
    if basic is not None:
        client_id, secret = basic
        if form.get("client_id", client_id) != client_id:
            raise MalformedClientAuthentication("client_id differs from the Basic credentials")
        return _by_secret(client_id, secret, method)
    if method == "client_secret_post":
        if not form.get("client_id"):
            raise MalformedClientAuthentication("client_id is required with client_secret")
        return _by_secret(form["client_id"], form["client_secret"], method)
    if assertion_type != client_assertions.ASSERTION_TYPE or not form.get("client_assertion"):
        raise MalformedClientAuthentication(
            f"client_assertion_type must be {client_assertions.ASSERTION_TYPE} "
            "with a client_assertion",
        )
    assertion = form["client_assertion"]
    if federation.is_federated(assertion):
        return _by_federated_token(assertion, form.get("client_id", ""))
    try:
        client_id = client_assertions.claimed_client_id(assertion)
    except client_assertions.AssertionRejected as exc:
        raise ClientAuthFailed(str(exc), form.get("client_id", ""), method) from None
    if form.get("client_id", client_id) != client_id:
        raise ClientAuthFailed("client_id differs from the assertion's iss", client_id, method)
    service = _service(client_id, method)
    try:
        client_assertions.verify(service, assertion)
    except client_assertions.AssertionRejected as exc:
        raise ClientAuthFailed(str(exc), client_id, method) from None
    return AuthenticatedClient(service, method)


def _by_federated_token(assertion: str, client_id: str) -> AuthenticatedClient:
    method = "federated_token"
    try:
        mapped = federation.verify(assertion)
    except federation.FederatedTokenRejected as exc:
        raise ClientAuthFailed(str(exc), client_id, method) from None
    if client_id and client_id != mapped:
        raise ClientAuthFailed("client_id differs from the mapped application", client_id, method)
    return AuthenticatedClient(_service(mapped, method), method)
