"""Revoking one grant: wipe it locally at once, then tell the provider (RFC 7009).

The local revocation is what counts: from the commit of `revoke_grant` on, the row holds no
ciphertext and its status is `revoked`, so nothing can serve a token for it. The call to the
provider's revocation endpoint happens afterwards in a Celery task; its failure is recorded
for admins but never brings the grant back.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import requests
from authlib.integrations.requests_client import OAuth2Session
from celery import shared_task
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from broker.audit import trail
from broker.crypto.key_ring import DecryptionError
from broker.crypto.sealed_fields import keyring
from broker.infra.outbound_http import provider_session
from broker.infra.retried_task import RetriedTask
from broker.models import Grant, ProviderApp
from broker.notify.dispatch import notify

logger = logging.getLogger(__name__)


def upstream_associated_data(grant_id: uuid.UUID | str) -> str:
    """Binds the sealed token in the task message to this grant and this purpose only."""
    return f"revocation:{grant_id}"


def revoke_grant(
    grant_id: uuid.UUID | str,
    *,
    actor_type: str,
    actor: str,
    reason: str,
    request: HttpRequest | None = None,
) -> bool:
    """Revokes the grant locally now and upstream soon; True if this call revoked it.

    Idempotent: a grant already revoked (or gone) is left alone and False returned. The row
    is locked for the check and the write, so two concurrent calls revoke it once.
    """
    with transaction.atomic():
        grant = (
            Grant.objects.select_for_update()
            .select_related("provider_app", "user")
            .filter(pk=grant_id)
            .first()
        )
        if grant is None or grant.status == Grant.Status.REVOKED:
            return False
        app = grant.provider_app
        upstream = _seal_for_upstream(grant, app)

        columns = grant.wipe_secrets()
        grant.status = Grant.Status.REVOKED
        grant.revoked_at = timezone.now()
        grant.revoked_reason = reason[:500]
        grant.next_refresh_at = None
        grant.refresh_enqueued_at = None
        grant.save(
            update_fields=[
                *columns,
                "status",
                "revoked_at",
                "revoked_reason",
                "next_refresh_at",
                "refresh_enqueued_at",
                "updated_at",
            ]
        )
        is_user = actor_type == trail.ActorType.USER
        trail.record(
            "grant.disconnected" if is_user else "grant.revoked",
            actor_type=actor_type,
            actor=actor,
            grant_id=grant.pk,
            subject_user=grant.user.get_username(),
            provider=app.slug,
            scopes=grant.scopes,
            request=request,
            reason=reason[:500],
            upstream="queued" if upstream else "not_supported",
        )
        notify("grant.revoked", grant, reason=reason[:500], by=actor_type)
        if upstream is not None:
            sealed, hint = upstream
            pk = str(grant.pk)
            transaction.on_commit(lambda: revoke_upstream.delay(pk, sealed, hint))
    return True


def _seal_for_upstream(grant: Grant, app: ProviderApp) -> tuple[str, str] | None:
    """The token to revoke at the provider, captured before the wipe and sealed for the task.

    RFC 7009 section 2.1: revoking a refresh token also invalidates the access tokens it
    produced, so the refresh token is preferred when there is one.
    """
    if not app.endpoint("revoke"):
        return None
    try:
        for field, hint in (("refresh_token", "refresh_token"), ("access_token", "access_token")):
            token = grant.unseal(field)
            if token:
                return keyring().encrypt(token, upstream_associated_data(grant.pk)), hint
    except DecryptionError as exc:
        # A token we cannot read cannot be revoked upstream; the local revocation still wins.
        logger.warning(
            "grant %s: token unreadable, skipping upstream revocation: %s", grant.pk, exc
        )
    return None


class UpstreamRetryable(Exception):
    """A network error or 5xx: worth another try later."""


def call_revocation_endpoint(app: ProviderApp, token: str, token_type_hint: str) -> None:
    """RFC 7009 section 2.1: POST token and token_type_hint as a form, client authenticated
    with HTTP Basic (client_secret_basic). Raises UpstreamRetryable for network errors and
    5xx, ValueError for any other refusal; 200 is success (also for unknown tokens, 2.2)."""
    url = app.endpoint("revoke")
    if not url:
        raise ValueError("the provider app has no revocation endpoint")
    session = OAuth2Session(
        client_id=app.client_id,
        client_secret=app.unseal("client_secret") or "",
        revocation_endpoint_auth_method="client_secret_basic",
    )
    try:
        with provider_session(session):
            response = session.revoke_token(
                url, token=token, token_type_hint=token_type_hint, allow_redirects=False
            )
    except requests.RequestException as exc:
        raise UpstreamRetryable(type(exc).__name__) from None
    if response.status_code >= 500:
        raise UpstreamRetryable(f"HTTP {response.status_code}")
    if response.status_code != 200:
        raise ValueError(f"HTTP {response.status_code}")


class RevocationTask(RetriedTask):
    def gave_up(
        self, exc: Exception, attempts: int, grant_id: str, sealed_token: str, hint: str
    ) -> None:
        """The provider stayed unreachable (or the task broke): admins see it in the audit
        log and on the grant's page; the local revocation stands."""
        grant = Grant.objects.select_related("provider_app", "user").filter(pk=grant_id).first()
        if grant is not None:
            _record_upstream_failure(grant, f"gave up after {attempts} attempts: {exc}")


# Waits below 10 s, 20 s, 40 s ... doubling up to 20 min, 8 retries: on average 20 minutes
# from the first attempt to the last (at most 41 min).
@shared_task(
    bind=True,
    base=RevocationTask,
    name="broker.revocation.revoke_upstream",
    autoretry_for=(UpstreamRetryable,),
    retry_backoff=10,
    retry_backoff_max=1200,
    max_retries=8,
)
def revoke_upstream(self: Any, grant_id: str, sealed_token: str, token_type_hint: str) -> str:
    """Calls the provider's revocation endpoint for a grant already revoked locally.
    UpstreamRetryable is retried by Celery; a refusal is recorded at once."""
    grant = Grant.objects.select_related("provider_app", "user").filter(pk=grant_id).first()
    if grant is None:
        return "gone"
    app = grant.provider_app
    try:
        token = keyring().decrypt(sealed_token, upstream_associated_data(grant.pk))
        call_revocation_endpoint(app, token, token_type_hint)
    except (ValueError, DecryptionError) as exc:
        _record_upstream_failure(grant, str(exc))
        return "failed"
    trail.record(
        "grant.upstream_revoked",
        actor_type=trail.ActorType.SYSTEM,
        grant_id=grant.pk,
        subject_user=grant.user.get_username(),
        provider=app.slug,
    )
    return "revoked"


def _record_upstream_failure(grant: Grant, error: str) -> None:
    trail.record(
        "grant.upstream_revoke_failed",
        actor_type=trail.ActorType.SYSTEM,
        outcome=trail.Outcome.FAILURE,
        grant_id=grant.pk,
        subject_user=grant.user.get_username(),
        provider=grant.provider_app.slug,
        error=error[:300],
    )
