"""The id of the request being served, to tie together its log lines, its audit events and
the calls it made upstream.

The front (a load balancer, nginx) may send one in X-Request-ID; a sane value (a short
token of letters, digits and `._:-`, what uuids, nginx's $request_id and AWS's trace ids
look like) is kept so that the front's logs and the broker's match; anything else is
replaced by a new one, so that a caller cannot put text of its choice into the logs and
the audit trail. The id lives in a context variable for the request's duration (each
thread, and each Celery task that the request enqueued: broker.ops.logging_config, has
its own), read by the log filter, the audit trail and outbound HTTP.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token

HEADER = "X-Request-ID"
META_KEY = "HTTP_X_REQUEST_ID"
_SANE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")

_current: ContextVar[str | None] = ContextVar("broker_request_id", default=None)


def accepted(value: str | None) -> str:
    """`value` if it is a sane request id, else a new one."""
    if value and _SANE.fullmatch(value):
        return value
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    """The id of the request (or of the request that enqueued the task) being served."""
    return _current.get()


def bind_request_id(request_id: str | None) -> Token[str | None]:
    """Makes `request_id` the current one until `unbind_request_id` with the result."""
    return _current.set(request_id)


def unbind_request_id(token: Token[str | None]) -> None:
    _current.reset(token)


@contextmanager
def serving(request_id: str | None) -> Iterator[None]:
    """Makes `request_id` the current one until the block ends."""
    token = bind_request_id(request_id)
    try:
        yield
    finally:
        unbind_request_id(token)
