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


class CountedClient:
    """The real client, counting the pipelines (round trips) taken from it."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.pipelines = 0

    def __call__(self) -> redis.Redis:
        self.pipelines += 1
        return self.client


def run_at_once(shared: SharedRoundTrip, queues: list[Any]) -> list[Any]:
    """Each queue function's outcome (its replies, or the exception raised), every caller on
    a thread of its own; the first one's round trip is held until all the others wait for
    theirs, so that they must share the next."""
    outcomes: list[Any] = [None] * len(queues)
    first_holds = threading.Event()

    def first_queue(pipe: Any) -> None:
        first_holds.wait(timeout=10)
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
    while len(shared._waiting) < len(queues) - 1 and time.monotonic() < deadline:
        time.sleep(0.001)
    first_holds.set()
    for thread in threads:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in threads), "a caller never got its replies"
    return outcomes


def incr_twice(key: str):
    def queue(pipe: Any) -> None:
        pipe.incr(key)
        pipe.incr(key)

    return queue


def test_a_caller_alone_gets_its_replies_in_one_round_trip():
    counted = CountedClient(redis_client())
    key = f"test:shared:{uuid.uuid4()}"
    assert SharedRoundTrip(counted).execute(incr_twice(key)) == [1, 2]
    assert counted.pipelines == 1


def test_callers_at_once_share_a_round_trip_and_each_gets_its_own_replies():
    counted = CountedClient(redis_client())
    shared = SharedRoundTrip(counted)
    keys = [f"test:shared:{uuid.uuid4()}" for _ in range(CALLERS)]
    outcomes = run_at_once(shared, [incr_twice(key) for key in keys])
    assert outcomes == [[1, 2]] * CALLERS
    # The first alone, then all the others that came while it was under way.
    assert counted.pipelines == 2
    assert [int(redis_client().get(key)) for key in keys] == [2] * CALLERS
    # Nothing left behind: the next caller goes at once.
    assert shared.execute(incr_twice(keys[0])) == [3, 4]
    assert not shared._sending and shared._waiting == []


def test_an_error_reply_is_raised_to_its_own_caller_only():
    shared = SharedRoundTrip(redis_client)
    listed = f"test:shared:list:{uuid.uuid4()}"
    redis_client().rpush(listed, "x")  # INCR on a list is an error reply
    keys = [f"test:shared:{uuid.uuid4()}" for _ in range(5)]
    queues = [incr_twice(key) for key in keys]
    queues[3] = incr_twice(listed)
    outcomes = run_at_once(shared, queues)
    assert isinstance(outcomes[3], redis.ResponseError)
    assert [o for i, o in enumerate(outcomes) if i != 3] == [[1, 2]] * 4
    assert redis_client().lrange(listed, 0, -1) == [b"x"]


def test_a_lost_connection_fails_every_caller_of_its_round_trip_and_blocks_no_later_one():
    unreachable = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    shared = SharedRoundTrip(lambda: unreachable)
    outcomes = run_at_once(shared, [incr_twice(f"test:shared:{i}") for i in range(5)])
    assert all(isinstance(o, redis.ConnectionError) for o in outcomes)
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
    holding, release = threading.Event(), threading.Event()

    def held(pipe: Any) -> None:
        holding.set()
        release.wait(timeout=10)
        pipe.ping()

    parent = threading.Thread(target=shared_round_trip().execute, args=(held,))
    parent.start()
    try:
        assert holding.wait(timeout=10)
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
        release.set()
        parent.join(timeout=10)
    assert os.waitstatus_to_exitcode(status) == 0
