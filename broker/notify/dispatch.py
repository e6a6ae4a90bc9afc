"""Telling services (signed webhooks) and users (email) what happened to a grant.

`notify()` writes the deliveries in the caller's transaction (so an event exists exactly
when the change that caused it was committed) and enqueues them after the commit. The
signature recipe is documented in docs/webhooks.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import smtplib
import time
from typing import Any

import requests
from celery import shared_task
from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import F, Q
from django.urls import reverse
from django.utils import timezone

from broker.audit.trail import record
from broker.infra.outbound_http import DestinationRefused, post
from broker.infra.retried_task import RetriedTask
from broker.models import (
    AccessRule,
    AuditEvent,
    Grant,
    ServiceClient,
    WebhookAttempt,
    WebhookDelivery,
)

log = logging.getLogger(__name__)

EVENTS = (
    "grant.created",
    "grant.refresh_failed",
    "grant.reconnect_required",
    "grant.revoked",
    "grant.expiring",
)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """HMAC-SHA256 over `timestamp + "." + body`, hex: the X-Broker-Signature value's digest."""
    message = timestamp.encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def subscribers(grant: Grant) -> list[ServiceClient]:
    """Enabled services with a webhook and an access rule covering the grant's app and user.

    A rule limited to a group only covers members, so no service hears of grants it could
    not see over the API.
    """
    user_groups = grant.user.groups.values("pk")
    rules = AccessRule.objects.filter(provider_app_id=grant.provider_app_id).filter(
        Q(users_group__isnull=True) | Q(users_group__in=user_groups)
    )
    return list(
        ServiceClient.objects.filter(enabled=True, pk__in=rules.values("service_id"))
        .exclude(webhook_url="")
        .exclude(webhook_secret_sealed="")
    )


def notify(event: str, grant: Grant, **data: Any) -> None:
    """Records the event's webhook deliveries and user emails; sends them after the commit.

    `data` goes into the JSON body as is: identifiers and reasons only, never a token.
    """
    if event not in EVENTS:
        raise ValueError(f"unknown event {event!r}")
    payload_grant = {
        "id": str(grant.pk),
        "user": grant.user.get_username(),
        "provider": grant.provider_app.slug,
        "account_id": grant.external_account_id,
        "account_name": grant.account_name,
        "status": grant.status,
    }
    occurred_at = timezone.now().isoformat()
    delivery_ids: list[str] = []
    for service in subscribers(grant):
        delivery = WebhookDelivery(
            service=service, event=event, grant_id=grant.pk, url=service.webhook_url
        )
        delivery.body = json.dumps(
            {
                "id": str(delivery.pk),
                "event": event,
                "occurred_at": occurred_at,
                "grant": payload_grant,
                "data": data,
            },
            separators=(",", ":"),
            sort_keys=True,
        )
        delivery.save()
        delivery_ids.append(str(delivery.pk))
    for delivery_id in delivery_ids:
        transaction.on_commit(lambda pk=delivery_id: deliver_webhook.delay(pk))  # type: ignore[misc]

    tells_user = event in ("grant.reconnect_required", "grant.expiring") or (
        event == "grant.revoked" and data.get("by") == "admin"
    )
    if tells_user and grant.user.email:
        grant_pk = str(grant.pk)
        transaction.on_commit(lambda: email_user.delay(grant_pk, event))


class ReceiverUnavailable(Exception):
    """A network error, a timeout, 429 or 5xx: worth another attempt later."""


class WebhookTask(RetriedTask):
    def gave_up(self, exc: Exception, attempts: int, delivery_id: str) -> None:
        """The last attempt failed too (or the task broke): the delivery failed for good."""
        delivery = WebhookDelivery.objects.filter(pk=delivery_id).first()
        if delivery is not None:
            _finish(delivery, WebhookDelivery.Status.FAILED, str(exc) or type(exc).__name__)


# Waits below 5 s, 10 s, 20 s ... doubling up to 1 h, 12 retries: on average 1 h 43 min
# from the first attempt to the last (at most 3 h 25 min). docs/webhooks.md says so.
@shared_task(
    bind=True,
    base=WebhookTask,
    name="broker.notifications.deliver_webhook",
    autoretry_for=(ReceiverUnavailable,),
    retry_backoff=5,
    retry_backoff_max=3600,
    max_retries=12,
)
def deliver_webhook(self: Any, delivery_id: str) -> str:
    """One attempt at a delivery; 2xx ends it, network errors, 429 and 5xx retry with
    backoff, other 4xx and refused destinations fail it for good."""
    delivery = WebhookDelivery.objects.select_related("service").filter(pk=delivery_id).first()
    if delivery is None or delivery.status != WebhookDelivery.Status.PENDING:
        return "gone"
    secret = delivery.service.unseal("webhook_secret")
    if not secret:
        return _finish(delivery, WebhookDelivery.Status.FAILED, "the service has no webhook secret")
    body = delivery.body.encode()
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "oauth-broker-webhooks",
        "X-Broker-Event": delivery.event,
        "X-Broker-Delivery": str(delivery.pk),
        "X-Broker-Timestamp": timestamp,
        "X-Broker-Signature": f"sha256={sign(secret, timestamp, body)}",
    }
    number = _next_attempt_number(delivery)
    started = time.monotonic()
    status_code: int | None = None
    error = ""
    retryable = False
    try:
        status_code = post(delivery.url, body, headers).status_code
    except DestinationRefused as exc:
        error = f"destination refused: {exc}"
    except requests.RequestException as exc:
        error = type(exc).__name__
        retryable = True
    duration_ms = int((time.monotonic() - started) * 1000)
    if status_code is not None and not 200 <= status_code < 300:
        error = f"HTTP {status_code}"
        retryable = status_code >= 500 or status_code == 429
    WebhookAttempt.objects.create(
        delivery=delivery,
        number=number,
        status_code=status_code,
        error=error[:500],
        duration_ms=duration_ms,
    )
    if not error:
        return _finish(delivery, WebhookDelivery.Status.DELIVERED, "")
    if retryable:
        WebhookDelivery.objects.filter(pk=delivery.pk).update(last_error=error[:500])
        raise ReceiverUnavailable(error)  # retried by Celery; the last one ends in gave_up
    return _finish(delivery, WebhookDelivery.Status.FAILED, error)


def _next_attempt_number(delivery: WebhookDelivery) -> int:
    WebhookDelivery.objects.filter(pk=delivery.pk).update(attempt_count=F("attempt_count") + 1)
    return WebhookDelivery.objects.values_list("attempt_count", flat=True).get(pk=delivery.pk)


def _finish(delivery: WebhookDelivery, status: str, error: str) -> str:
    WebhookDelivery.objects.filter(pk=delivery.pk, status=WebhookDelivery.Status.PENDING).update(
        status=status,
        last_error=error[:500],
        delivered_at=timezone.now() if status == WebhookDelivery.Status.DELIVERED else None,
    )
    return status


USER_MESSAGES = {
    "grant.reconnect_required": (
        "Reconnect your {provider} account",
        "The broker can no longer use your {provider} connection ({account}). Services that "
        "act for you there will fail until you reconnect it at {url}.",
    ),
    "grant.revoked": (
        "Your {provider} connection was revoked",
        "An administrator revoked your {provider} connection ({account}). You can connect it "
        "again at {url} if you still need it.",
    ),
    "grant.expiring": (
        "Reconnect your {provider} account before {expires}",
        "Your {provider} connection ({account}) stops working on {expires}: {provider} ends "
        "every authorization a year after it was given. Reconnect it at {url} before then, "
        "and services that act for you there keep working.",
    ),
}


# Grants holding an API token (protocol "api_token") end when the token does; the user
# makes a new token at the provider and stores it, there is nothing to reconnect.
API_TOKEN_MESSAGES = {
    **USER_MESSAGES,
    "grant.reconnect_required": (
        "Your {provider} API token has expired",
        "The API token you stored for {provider} ({account}) has expired or was refused, so "
        "services that act for you there fail. Create a new API token at {provider} and "
        "store it at {url}.",
    ),
    "grant.expiring": (
        "Your {provider} API token expires on {expires}",
        "The API token you stored for {provider} ({account}) expires on {expires}. Create a "
        "new one at {provider} and store it at {url} before then, and services that act "
        "for you there keep working.",
    ),
}


class MailServerUnavailable(Exception):
    """The mail server could not be reached, hung up, timed out or answered 4xx (RFC 5321
    4.2.1: a transient failure): worth another attempt later."""


class EmailTask(RetriedTask):
    def gave_up(self, exc: Exception, attempts: int, grant_id: str, event: str) -> None:
        """The last attempt failed too, or the mail server refused the message for good:
        the audit log says the user was not told, and why."""
        log.warning("e-mail about %s to the owner of grant %s not sent: %r", event, grant_id, exc)
        record(
            "user.email_failed",
            actor_type=AuditEvent.ActorType.SYSTEM,
            outcome=AuditEvent.Outcome.FAILURE,
            grant_id=grant_id,
            event=event,
            attempts=attempts,
            error=repr(exc),
        )


def _transient(exc: Exception) -> bool:
    """A connection error, a timeout, a hang-up or a 4xx reply; not a 5xx reply (a refused
    sender or recipient: sending again would be refused again)."""
    if isinstance(exc, smtplib.SMTPResponseException):
        return 400 <= exc.smtp_code < 500
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return all(400 <= code < 500 for code, _ in exc.recipients.values())
    return isinstance(exc, smtplib.SMTPServerDisconnected | OSError)


# Waits below 10 s, 20 s, 40 s ... doubling up to 30 min, 10 retries: the user is told
# within about 1 h 40 min of an outage's end, at most 2 h 30 min after the first attempt.
@shared_task(
    bind=True,
    base=EmailTask,
    name="broker.notifications.email_user",
    autoretry_for=(MailServerUnavailable,),
    retry_backoff=10,
    retry_backoff_max=1800,
    max_retries=10,
)
def email_user(self: Any, grant_id: str, event: str) -> str:
    """Emails the grant's owner about an event that needs their attention (no secrets).
    Retried while the mail server is away; a message it accepted is not sent again."""
    grant = Grant.objects.select_related("user", "provider_app").filter(pk=grant_id).first()
    if grant is None or not grant.user.email or event not in USER_MESSAGES:
        return "skipped"
    is_api_token = grant.provider_app.protocol == "api_token"
    subject, text = (API_TOKEN_MESSAGES if is_api_token else USER_MESSAGES)[event]
    context = {
        "provider": grant.provider_app.name,
        "account": grant.account_name or grant.external_account_id,
        "url": settings.BROKER_PUBLIC_URL + reverse("connections"),
        "expires": f"{grant.refresh_absolute_expires_at:%Y-%m-%d}"
        if grant.refresh_absolute_expires_at
        else "",
    }
    try:
        send_mail(
            subject.format(**context),
            text.format(**context),
            settings.DEFAULT_FROM_EMAIL,
            [grant.user.email],
        )
    except Exception as exc:
        if _transient(exc):
            raise MailServerUnavailable(repr(exc)) from exc  # retried; the last one: gave_up
        raise  # for good: gave_up records it
    return "sent"
