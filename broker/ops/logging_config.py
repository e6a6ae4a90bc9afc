"""Logging: plain or JSON lines, one per request and per Celery task, and no secret ever.

Redaction happens in ONE place: `RedactingFilter`, attached to the root handler (and to
Django's own handlers, which are routed to it), so every record from every library passes
through it before it is written. It removes known sensitive parameters and headers from
the message, its arguments and any traceback, and strips query strings and user info from
URLs. Code should still not log secrets; this is the net under it.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from contextvars import Token
from typing import Any

import kombu.exceptions
import redis.exceptions
from django.http import HttpRequest, HttpResponse

from broker.infra.client_address import client_ip
from broker.infra.request_id import (
    HEADER,
    META_KEY,
    accepted,
    bind_request_id,
    current_request_id,
    serving,
    unbind_request_id,
)

REDACTED = "[REDACTED]"
SENSITIVE_KEYS = (
    "access_token",
    "refresh_token",
    "id_token",
    "client_secret",
    "code",
    "code_verifier",
    "oauth_verifier",
    "oauth_token",
    "oauth_token_secret",
    "token_secret",
    "request_token_secret",
    "consumer_secret",
    "oauth_signature",
    "client_assertion",
    "password",
    "token",
    "secret",
    "webhook_secret",
    "authorization",
    "private_key",
    "assertion",
    # OAuth state binds a consent in progress to its browser session.
    "state",
)
_KEYS = "|".join(sorted(SENSITIVE_KEYS, key=len, reverse=True))
# A key starts a word, or follows a percent-encoded character (`%26code%3D...`).
_KEY_START = r"(?:(?<![A-Za-z0-9_%])|(?<=%[0-9A-Fa-f]{2}))"
_PATTERNS: list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]] = [
    # URLs: drop user info and the query string (credentialed or code-carrying URLs).
    (
        re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)(?:[^\s/@?#]*@)?([^\s?#\"'<>]*)\?[^\s#\"'<>]*"),
        r"\1\2?" + REDACTED,
    ),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/@?#]*@"), r"\1"),
    # "key": "value" / 'key': 'value' (JSON, Python reprs of dicts and headers).
    (
        re.compile(rf"(?i)([\"'](?:{_KEYS})[\"']\s*[:=,]\s*)([\"'])(?:\\.|(?!\2).)*\2"),
        rf"\1\2{REDACTED}\2",
    ),
    # Header lines and free text: "Authorization: Bearer xyz", "Authorization=Basic ...".
    (re.compile(r"(?i)\b(authorization\s*[:=]\s*)[^\n,;]*"), rf"\1{REDACTED}"),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}"), rf"\1 {REDACTED}"),
    # key=value in forms, query strings and OAuth 1.0a headers (oauth_token="..."), also
    # percent-encoded inside another URL's parameter (refresh_token%3D...%26...).
    (
        re.compile(rf"(?i){_KEY_START}((?:{_KEYS})(?:=|%3D))(\"[^\"]*\"|(?:(?!%26)[^&\s,;\"'])+)"),
        rf"\1{REDACTED}",
    ),
    # key: value in free text, YAML and header-like lines ("refresh_token: abc").
    (
        re.compile(rf"(?i){_KEY_START}((?:{_KEYS})\s*:\s*)(\"[^\"]*\"|'[^']*'|[^\s,;&\"'<>]+)"),
        rf"\1{REDACTED}",
    ),
    # The broker's own issued secrets are recognisable by their prefix.
    (re.compile(r"\bbk[sw]_[A-Za-z0-9_-]+"), REDACTED),
]


def redact(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites each record so that no handler can write a secret it carried."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed format string: keep what can be kept
            message = f"{record.msg!r} {record.args!r}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            # Formatters reuse exc_text when it is set, so the raw traceback is never printed.
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for name in EXTRA_FIELDS:
            value = getattr(record, name, None)
            if isinstance(value, str):
                setattr(record, name, redact(value))
        return True


class RequestIdFilter(logging.Filter):
    """Puts the current request's id (broker.infra.request_id) on every record written
    while it is served, whoever logs it: a traceback, a refresh's warning, a task's line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            request_id = current_request_id()
            if request_id is not None:
                record.request_id = request_id
        return True


class UnexpectedErrorsOnlyFilter(logging.Filter):
    """django.request: keeps the records of exceptions no view handled (their traceback).
    Every response, 4xx and 5xx included, already has its line from RequestLogMiddleware:
    Django's "Not Found: /x" (WARNING) or "Service Unavailable: /readyz" (ERROR) would only
    repeat it, louder."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.exc_info is not None


# Exceptions that mean "Redis (or another server) is unreachable for now": an outage the
# worker and beat recover from by themselves, not a bug to read a traceback for.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,  # refused, reset, aborted (OSError subclasses)
    TimeoutError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    kombu.exceptions.OperationalError,
)
# Celery's and kombu's own loggers whose warnings and errors repeat while the broker
# connection is down (the consumer's "Cannot connect ... Trying again", beat's "Connection
# error", bootsteps restarting): the same line at most once per window.
CONNECTION_LOGGERS = ("celery.worker.consumer", "celery.beat", "celery.bootsteps", "kombu")
REPEAT_WINDOW_SECONDS = 60.0


class SettledWarningsFilter(logging.Filter):
    """py.warnings: drops the warnings this project has decided on (SETTLED_WARNINGS), which
    libraries repeat at every occurrence (Celery makes its own warnings "always")."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = _message(record)
        return not any(settled in message for settled in SETTLED_WARNINGS)


SETTLED_WARNINGS = (
    # Celery 5 warns, at every lost broker connection (nine lines each time), that Celery 6
    # will cancel the tasks running then. The broker lets them end: a refresh cut off
    # between the provider's answer and its commit would lose a rotated refresh token, and
    # tasks are idempotent, so one delivered again does no harm.
    "worker_cancel_long_running_tasks_on_connection_loss",
)


def connection_error_of(exc: BaseException | None) -> BaseException | None:
    """The connection error that caused `exc` (itself, or one it was raised from or while
    handling), if any."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, CONNECTION_ERRORS):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


class ConnectionTroubleFilter(logging.Filter):
    """While Redis is away, one short line per kind of event, not a traceback each time.

    A record caused by a connection error (anywhere in its exception chain, so Celery's own
    AttributeError while it restarts a component after the connection died counts too)
    loses its traceback and is written on one line naming the connection error
    (`connection_error` field). Such records, and the warnings of Celery's connection
    loggers (CONNECTION_LOGGERS), are written at most once per REPEAT_WINDOW_SECONDS per
    logger and message; the next one written says how many were left out (`repeated`).
    Other records, tracebacks of real failures included, pass unchanged."""

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        cause = connection_error_of(record.exc_info[1] if record.exc_info else None)
        repeats = record.levelno >= logging.WARNING and record.name.startswith(CONNECTION_LOGGERS)
        if cause is None and not repeats:
            return True
        message = _one_line(_message(record))
        if cause is not None:
            described = f"{type(cause).__name__}: {cause}"
            if str(cause) not in message:
                message = f"{message} ({_one_line(described)})"
            record.exc_info = None
            record.exc_text = None
            record.stack_info = None
            record.connection_error = _one_line(described)
        key = (record.name, str(record.msg), type(cause).__name__)
        now = time.monotonic()
        with self._lock:
            last, left_out = self._last.get(key, (-REPEAT_WINDOW_SECONDS, 0))
            if now - last < REPEAT_WINDOW_SECONDS:
                self._last[key] = (last, left_out + 1)
                return False
            self._last[key] = (now, 0)
        if left_out:
            record.repeated = left_out
            message = f"{message} ({left_out} more like it left out)"
        record.msg, record.args = message, None
        return True


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:
        return str(record.msg)


def _one_line(text: str) -> str:
    """The message's lines joined, up to where a stack or traceback listing starts (beat's
    "Message Error" carries the whole stack in its text)."""
    kept = []
    for line in text.splitlines():
        if line.lstrip().startswith(("Traceback", "['", 'File "')):
            break
        if line.strip():
            kept.append(line.strip())
    return " ".join(kept)


# Structured fields the request and task log lines carry (JSON keys).
EXTRA_FIELDS = (
    "connection_error",
    "repeated",
    "request_id",
    "client",
    "method",
    "path",
    "status",
    "duration_ms",
    "user",
    "service",
    "task",
    "task_id",
    "state",
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in EXTRA_FIELDS:
            if hasattr(record, name):
                line[name] = getattr(record, name)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, default=str)


JsonFormatter.converter = time.gmtime


def max_level(*levels: str) -> str:
    return max(levels, key=logging.getLevelName)


def logging_settings(level: str, log_format: str) -> dict[str, Any]:
    """The LOGGING dict: one console handler, with the redacting filter, for everything.

    Django's own loggers are re-pointed at it (their default handlers would bypass the
    filter: `django.server` prints request lines with query strings, `mail_admins` mails
    request details)."""
    if log_format not in ("plain", "json"):
        raise ValueError("LOG_FORMAT must be plain or json")
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "redact": {"()": "broker.ops.logging_config.RedactingFilter"},
            "request_id": {"()": "broker.ops.logging_config.RequestIdFilter"},
            "connection_trouble": {"()": "broker.ops.logging_config.ConnectionTroubleFilter"},
            "settled_warnings": {"()": "broker.ops.logging_config.SettledWarningsFilter"},
            "unexpected_errors_only": {
                "()": "broker.ops.logging_config.UnexpectedErrorsOnlyFilter"
            },
        },
        "formatters": {
            "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
            "json": {"()": "broker.ops.logging_config.JsonFormatter"},
        },
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": log_format,
                "filters": ["request_id", "connection_trouble", "redact"],
            }
        },
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            "django": {"handlers": [], "level": level, "propagate": True},
            "django.request": {
                "handlers": [],
                "level": level,
                "propagate": True,
                "filters": ["unexpected_errors_only"],
            },
            # runserver's access lines would repeat broker.request's line for each request
            # (and print query strings); failures still reach django.request.
            "django.server": {"handlers": [], "level": "CRITICAL", "propagate": True},
            "celery": {"handlers": [], "level": level, "propagate": True},
            "py.warnings": {
                "handlers": [],
                "level": level,
                "propagate": True,
                "filters": ["settled_warnings"],
            },
            # broker.task logs each run once; Celery's "received" / "succeeded" lines, and
            # beat's "Sending due task" every few seconds, would only repeat it. Warnings
            # and errors (a task failed, a message could not be sent) still show.
            **{
                name: {"handlers": [], "level": max_level(level, "WARNING"), "propagate": True}
                for name in (
                    "celery.beat",
                    "celery.app.trace",
                    "celery.worker.strategy",
                    # "Discarding revoked task" for each beat task that expired unsent
                    # (claim-due-refreshes), e.g. after an outage.
                    "celery.worker.request",
                )
            },
        },
    }


request_logger = logging.getLogger("broker.request")
task_logger = logging.getLogger("broker.task")


def name_service(request: HttpRequest, client_id: str) -> None:
    """Records which service made `request` (once it proved it), for its request log line."""
    request.service_client_id = client_id  # type: ignore[attr-defined]


class RequestLogMiddleware:
    """One line per request: method, path (never the query string), status, duration, the
    client's address, the request id, and who asked: the signed-in user's id, or the
    service that `name_service` recorded.

    The request id (broker.infra.request_id: the front's X-Request-ID when sane, else a new
    one) is current while the request is served (log lines, audit events, upstream calls
    carry it) and is returned in the X-Request-ID response header."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.monotonic()
        request_id = accepted(request.META.get(META_KEY))
        request.request_id = request_id  # type: ignore[attr-defined]
        with serving(request_id):
            response = self.get_response(request)
            response[HEADER] = request_id
            duration_ms = round((time.monotonic() - started) * 1000, 1)
            service = getattr(request, "service_client_id", None)
            # A service's request has no signed-in user; asking would load the session.
            user = getattr(request, "user", None) if service is None else None
            user_id = user.pk if user is not None and user.is_authenticated else None
            address = client_ip(request)
            fields = {
                "request_id": request_id,
                "client": address,
                "method": request.method,
                "path": request.path,
                "status": response.status_code,
                "duration_ms": duration_ms,
                "user": user_id,
                "service": service,
            }
            who = f" service={service}" if service else f" user={user_id}" if user_id else ""
            request_logger.info(
                "%s %s %s %sms client=%s request_id=%s%s",
                request.method,
                request.path,
                response.status_code,
                duration_ms,
                address,
                request_id,
                who,
                extra=fields,
            )
        return response


_task_started: dict[str, float] = {}


_task_request_ids: dict[str, Token[str | None]] = {}
REQUEST_ID_TASK_HEADER = "broker_request_id"


def on_before_task_publish(headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
    """A task enqueued while a request is served carries the request's id: its log lines,
    audit events and upstream calls name the request that caused them."""
    request_id = current_request_id()
    if request_id is not None and headers is not None:
        headers.setdefault(REQUEST_ID_TASK_HEADER, request_id)


def on_task_prerun(task_id: str | None = None, task: Any = None, **kwargs: Any) -> None:
    if task_id:
        _task_started[task_id] = time.monotonic()
        request_id = getattr(getattr(task, "request", None), REQUEST_ID_TASK_HEADER, None)
        if isinstance(request_id, str):
            _task_request_ids[task_id] = bind_request_id(request_id)


def on_task_postrun(
    task_id: str | None = None,
    task: Any = None,
    state: str | None = None,
    retval: Any = None,
    **kwargs: Any,
) -> None:
    """One line per task run: name, id, final state, duration; never its arguments.

    A frequent housekeeping task (declared with `quiet_when_idle=True`) that succeeded and
    found nothing to do (returned 0) logs at DEBUG: no line every few seconds when idle."""
    started = _task_started.pop(task_id or "", None)
    bound = _task_request_ids.pop(task_id or "", None)
    duration_ms = round((time.monotonic() - started) * 1000, 1) if started else None
    name = getattr(task, "name", "?")
    idle = state == "SUCCESS" and not retval and getattr(task, "quiet_when_idle", False)
    task_logger.log(
        logging.DEBUG if idle else logging.INFO,
        "task %s %s %s %sms",
        name,
        task_id,
        state,
        duration_ms,
        extra={"task": name, "task_id": task_id, "state": state, "duration_ms": duration_ms},
    )
    if bound is not None:
        unbind_request_id(bound)


def connect_task_logging() -> None:
    from celery.signals import before_task_publish, task_postrun, task_prerun

    before_task_publish.connect(
        on_before_task_publish, weak=False, dispatch_uid="broker-task-request-id"
    )
    task_prerun.connect(on_task_prerun, weak=False, dispatch_uid="broker-task-prerun")
    task_postrun.connect(on_task_postrun, weak=False, dispatch_uid="broker-task-postrun")
