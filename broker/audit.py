"""The one way to write the audit log. Callers pass identifiers, never tokens or secrets."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from django.http import HttpRequest

from broker.models import AuditEvent

ActorType = AuditEvent.ActorType
Outcome = AuditEvent.Outcome


def client_ip(request: HttpRequest | None) -> str | None:
    """The peer address Django saw (a proxy in front must be trusted to set REMOTE_ADDR)."""
    if request is None:
        return None
    return request.META.get("REMOTE_ADDR") or None


def record(
    action: str,
    *,
    actor_type: str,
    actor: str = "",
    outcome: str = Outcome.SUCCESS,
    grant_id: uuid.UUID | str | None = None,
    subject_user: str = "",
    provider: str = "",
    service: str = "",
    scopes: Iterable[str] = (),
    request: HttpRequest | None = None,
    **detail: Any,
) -> AuditEvent:
    return AuditEvent.objects.create(
        action=action,
        actor_type=actor_type,
        actor=actor,
        outcome=outcome,
        grant_id=grant_id,
        subject_user=subject_user,
        provider=provider,
        service=service,
        scopes=list(scopes),
        client_ip=client_ip(request),
        detail=detail,
    )
