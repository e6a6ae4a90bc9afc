"""Redis commands of many threads of a process, sent in one round trip (group commit).

A burst of callers answered at once (the waiters of one refresh, woken together) each sent
their commands in a pipeline of their own: a round trip per caller, one after the other,
each costing its thread CPU in redis-py and the GIL's handovers (benchmarks/README.md,
"Figures behind the code"). Here a thread's commands join those of the threads that send
theirs while a round trip is under way, and the next round trip carries them all: a thread
alone goes at once, as before; under load a round trip carries many.

Each caller still waits for its own replies, so nothing is acknowledged before Redis took
it (a request is let through only once its rate-limit count is in Redis), and one caller's
failing command (an error reply, or an argument that cannot be sent) is raised to that
caller only. A lost connection fails every caller of that round trip, as it would have
failed each of them alone.
"""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Callable
from typing import Any

import redis
from redis.client import Pipeline

from broker.infra.redis_connection import redis_client


class _Ticket:
    """One caller's commands, and once sent, their replies (or the error)."""

    __slots__ = ("commands", "done", "replies", "error", "leads")

    def __init__(self, commands: Pipeline) -> None:
        self.commands = commands  # queued by the caller, never executed itself
        self.done = threading.Event()
        self.replies: list[Any] = []
        self.error: BaseException | None = None
        self.leads = False  # woken to send the round trip itself, not with replies

    def outcome(self) -> list[Any]:
        if self.error is not None:
            # Each caller raises an exception of its own: one object raised in many threads
            # at once would carry their tracebacks mixed.
            raise copy.copy(self.error).with_traceback(None) from self.error
        for reply in self.replies:
            if isinstance(reply, Exception):
                raise reply  # as pipe.execute() raises the first error reply
        return self.replies


class SharedRoundTrip:
    """The queue of one Redis client's callers in this process: at most one round trip is
    under way at a time; callers arriving meanwhile wait for the next, which the first of
    them sends (it is woken to lead it)."""

    def __init__(self, client: Callable[[], redis.Redis]) -> None:
        self._client = client
        self._guard = threading.Lock()
        self._waiting: list[_Ticket] = []
        self._sending = False

    def execute(self, queue: Callable[[Pipeline], None]) -> list[Any]:
        """The replies to the commands `queue` puts on the pipeline it is given, in order
        (raises the first error reply, or the connection's error, as pipe.execute())."""
        # Queued here, in the caller's own thread: whatever `queue` raises is its alone.
        commands = self._client().pipeline(transaction=False)
        queue(commands)
        ticket = _Ticket(commands)
        with self._guard:
            self._waiting.append(ticket)
            leads = not self._sending
            self._sending = True
        if not leads:
            ticket.done.wait()
        if leads or ticket.leads:
            self._send()
        return ticket.outcome()

    def _send(self) -> None:
        """Sends every waiting caller's commands in one pipeline, hands them their replies,
        and wakes the first caller that came meanwhile to send the next."""
        with self._guard:
            batch, self._waiting = self._waiting, []
        try:
            self._round_trip(batch)
        except redis.DataError:
            # An argument redis-py cannot send: found while packing, before anything was
            # sent. Each caller's commands go alone, so that only its own caller fails.
            for ticket in batch:
                self._alone(ticket)
        except BaseException as exc:  # noqa: BLE001 - each caller re-raises it
            for ticket in batch:
                ticket.error = exc
        finally:
            with self._guard:
                successor = self._waiting[0] if self._waiting else None
                if successor is None:
                    self._sending = False
                else:
                    successor.leads = True
            for ticket in batch:
                ticket.done.set()
            if successor is not None:
                successor.done.set()

    def _round_trip(self, batch: list[_Ticket]) -> None:
        pipe = self._client().pipeline(transaction=False)
        spans = []
        for ticket in batch:
            start = len(pipe)
            # redis-py's pipeline is its command stack (and the scripts it must load).
            pipe.command_stack.extend(ticket.commands.command_stack)
            pipe.scripts.update(ticket.commands.scripts)
            spans.append((start, len(pipe)))
        replies = pipe.execute(raise_on_error=False) if len(pipe) else []
        for ticket, (start, end) in zip(batch, spans, strict=True):
            ticket.replies = replies[start:end]

    def _alone(self, ticket: _Ticket) -> None:
        try:
            self._round_trip([ticket])
        except BaseException as exc:  # noqa: BLE001 - its caller re-raises it
            ticket.error = exc


_shared: SharedRoundTrip | None = None
_shared_guard = threading.Lock()


def _forget_after_fork() -> None:
    # A child forked while a round trip was under way would wait for it forever.
    global _shared, _shared_guard
    _shared, _shared_guard = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


def shared_round_trip() -> SharedRoundTrip:
    """The process's queue for the default Redis client (`redis_client()`)."""
    global _shared
    if _shared is None:
        with _shared_guard:
            if _shared is None:
                _shared = SharedRoundTrip(redis_client)
    return _shared
