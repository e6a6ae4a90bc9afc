"""Commands of many threads in one Redis round trip (broker.infra.shared_round_trip), against
the real Redis."""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any

import pytest
import redis

from broker.infra.redis_connection import redis_client
from broker.infra.shared_round_trip import SharedRoundTrip, shared_round_trip

CALLERS = 20


def patient_client() -> redis.Redis:
    """The shared client with time for `run_at_once`'s held round trip (a BLPOP of up to
    10 s; the default socket timeout is 0.5 s)."""
    return redis_client(socket_timeout=15)


def carrying_incr(sends: list[bytes]) -> list[bytes]:
    """The round trips that carried the tests' INCRs (not a new connection's handshake)."""
    return [sent for sent in sends if b"INCR" in sent]


def run_at_once(
    shared: SharedRoundTrip, queues: list[Any], joining: int | None = None
) -> list[Any]:
    """Each queue function's outcome (its replies, or the exception raised), every caller on
    a thread of its own; the first one's round trip is held in Redis (a BLPOP) until all the
    others wait for theirs, so that they must share the next."""
    outcomes: list[Any] = [None] * len(queues)
    hold = f"test:shared:hold:{uuid.uuid4()}"

    def first_queue(pipe: Any) -> None:
        pipe.blpop([hold], timeout=10)
        queues[0](pipe)

    def call(index: int) -> None:
        try:
            outcomes[index] = shared.execute(first_queue if index == 0 else queues[index])
        except Exception as exc:
            outcomes[index] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(queues))]
    threads[0].start()
    deadline = time.monotonic() + 10
    while not shared._sending and time.monotonic() < deadline:
        time.sleep(0.001)
    for thread in threads[1:]:
        thread.start()
    joining = len(queues) - 1 if joining is None else joining
    while len(shared._waiting) < joining and time.monotonic() < deadline:
        time.sleep(0.001)
    redis_client().rpush(hold, "go")
    for thread in threads:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in threads), "a caller never got its replies"
    if isinstance(outcomes[0], list):
        outcomes[0] = outcomes[0][1:]  # the hold's reply
    return outcomes


def incr_twice(key: str):
    def queue(pipe: Any) -> None:
        pipe.incr(key)
        pipe.incr(key)

    return queue


def test_a_caller_alone_gets_its_replies_in_one_round_trip(redis_sends):
    key = f"test:shared:{uuid.uuid4()}"
    shared = SharedRoundTrip(patient_client)
    assert shared.execute(incr_twice(key)) == [1, 2]
    assert len(carrying_incr(redis_sends)) == 1


def test_callers_at_once_share_a_round_trip_and_each_gets_its_own_replies(redis_sends):
    shared = SharedRoundTrip(patient_client)
    keys = [f"test:shared:{uuid.uuid4()}" for _ in range(CALLERS)]
    outcomes = run_at_once(shared, [incr_twice(key) for key in keys])
    assert outcomes == [[1, 2]] * CALLERS
    # The first alone, then all the others that came while it was under way.
    assert len(carrying_incr(redis_sends)) == 2
    assert [int(redis_client().get(key)) for key in keys] == [2] * CALLERS
    # Nothing left behind: the next caller goes at once.
    assert shared.execute(incr_twice(keys[0])) == [3, 4]
    assert not shared._sending and shared._waiting == []


def test_an_error_reply_is_raised_to_its_own_caller_only():
    shared = SharedRoundTrip(patient_client)
    listed = f"test:shared:list:{uuid.uuid4()}"
    redis_client().rpush(listed, "x")  # INCR on a list is an error reply
    keys = [f"test:shared:{uuid.uuid4()}" for _ in range(5)]
    queues = [incr_twice(key) for key in keys]
    queues[3] = incr_twice(listed)
    outcomes = run_at_once(shared, queues)
    assert isinstance(outcomes[3], redis.ResponseError)
    assert [o for i, o in enumerate(outcomes) if i != 3] == [[1, 2]] * 4
    assert redis_client().lrange(listed, 0, -1) == [b"x"]


def test_an_argument_that_cannot_be_sent_fails_its_own_caller_only():
    shared = SharedRoundTrip(patient_client)
    keys = [f"test:shared:{uuid.uuid4()}" for _ in range(5)]
    queues = [incr_twice(key) for key in keys]
    unsendable = f"test:shared:{uuid.uuid4()}"

    def bad_argument(pipe: Any) -> None:
        pipe.incr(unsendable)
        pipe.set(unsendable, None)  # redis-py refuses it when packing the round trip

    queues[3] = bad_argument
    outcomes = run_at_once(shared, queues)
    assert isinstance(outcomes[3], redis.DataError)
    assert [o for i, o in enumerate(outcomes) if i != 3] == [[1, 2]] * 4
    assert redis_client().get(unsendable) is None  # none of its commands went


def test_a_caller_whose_commands_cannot_be_queued_fails_alone_and_sends_nothing():
    shared = SharedRoundTrip(patient_client)
    key = f"test:shared:{uuid.uuid4()}"

    def broken(pipe: Any) -> None:
        pipe.incr(key)
        raise ValueError("a bug in the caller")

    with pytest.raises(ValueError, match="a bug"):
        shared.execute(broken)
    assert redis_client().get(key) is None
    assert not shared._sending and shared._waiting == []
    keys = [f"test:shared:{uuid.uuid4()}" for _ in range(4)]
    queues = [incr_twice(k) for k in keys]
    queues[2] = broken
    outcomes = run_at_once(shared, queues, joining=2)  # not the broken one
    assert isinstance(outcomes[2], ValueError)
    assert [o for i, o in enumerate(outcomes) if i != 2] == [[1, 2]] * 3
    assert redis_client().get(key) is None


def test_a_lost_connection_fails_every_caller_of_its_round_trip_and_blocks_no_later_one():
    unreachable = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    shared = SharedRoundTrip(lambda: unreachable)
    outcomes = run_at_once(shared, [incr_twice(f"test:shared:{i}") for i in range(5)])
    assert all(isinstance(o, redis.ConnectionError) for o in outcomes)
    assert len({id(o) for o in outcomes}) == len(outcomes)  # each its own, with its traceback
    with pytest.raises(redis.ConnectionError):
        shared.execute(incr_twice("test:shared:later"))
    assert not shared._sending and shared._waiting == []


def test_the_process_has_one_queue_for_the_default_client():
    assert shared_round_trip() is shared_round_trip()
    key = f"test:shared:{uuid.uuid4()}"
    assert shared_round_trip().execute(incr_twice(key)) == [1, 2]


def test_a_process_forked_during_a_round_trip_sends_its_own():
    """A child (a Celery worker's pool, say) inherits no round trip under way that it would
    wait for forever."""
    hold = f"test:shared:hold:{uuid.uuid4()}"
    parent = threading.Thread(
        target=shared_round_trip().execute, args=(lambda pipe: pipe.blpop([hold], timeout=10),)
    )
    parent.start()
    try:
        deadline = time.monotonic() + 10
        while not shared_round_trip()._sending and time.monotonic() < deadline:
            time.sleep(0.001)
        pid = os.fork()
        if pid == 0:  # the child: exits 0 only if its own call returns
            code = 1
            try:
                done = threading.Thread(
                    target=shared_round_trip().execute, args=(incr_twice("test:shared:child"),)
                )
                done.start()
                done.join(timeout=5)
                code = 1 if done.is_alive() else 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    finally:
        redis_client().rpush(hold, "go")
        parent.join(timeout=10)
    assert os.waitstatus_to_exitcode(status) == 0
