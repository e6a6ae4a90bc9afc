"""Keyset pagination of /api/v1/grants: pages of at most `limit` grants in creation order,
each answer naming the next page's URL (`next`, null on the last page).

The cursor is the last grant's (created_at, id), base64url-encoded JSON: opaque to
services, and harmless if forged (it only moves the start within what the service may see).
Unlike an offset, it neither skips nor repeats grants created or revoked between pages.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime

from django.db.models import Q, QuerySet
from django.http import HttpRequest, QueryDict

from broker.api.errors import invalid_request
from broker.infra import bounded_json
from broker.models import Grant

MAX_LIMIT = 1000


def page_limit(value: str | None) -> int:
    """The `limit` query parameter: 1 to 1000, 1000 when absent."""
    if value is None:
        return MAX_LIMIT
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
        raise invalid_request(f"query parameter 'limit' must be an integer from 1 to {MAX_LIMIT}")
    return int(value)


def encode_cursor(grant: Grant) -> str:
    position = json.dumps([grant.created_at.isoformat(), str(grant.pk)])
    return base64.urlsafe_b64encode(position.encode()).decode().rstrip("=")


def after_cursor(grants: QuerySet[Grant], cursor: str) -> QuerySet[Grant]:
    """The grants after `cursor` (a previous page's last grant)."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_at, grant_id = bounded_json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        at, pk = datetime.fromisoformat(created_at), uuid.UUID(grant_id)
    except (ValueError, TypeError, AttributeError, binascii.Error):
        raise invalid_request("query parameter 'cursor' is not one this API issued") from None
    if at.tzinfo is None:
        raise invalid_request("query parameter 'cursor' is not one this API issued")
    return grants.filter(Q(created_at__gt=at) | Q(created_at=at, pk__gt=pk))


def page(
    request: HttpRequest, grants: QuerySet[Grant], *, limit: int
) -> tuple[list[Grant], str | None]:
    """One page of `grants` and the URL of the next one (same filters), or None."""
    if cursor := request.GET.get("cursor"):
        grants = after_cursor(grants, cursor)
    rows = list(grants.order_by("created_at", "pk")[: limit + 1])
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    query = QueryDict(mutable=True)
    query.update(request.GET)
    query["cursor"] = encode_cursor(rows[-1])
    return rows, request.build_absolute_uri(f"{request.path}?{query.urlencode()}")
