"""A real Redis Sentinel group on loopback for the tests: a master, a replica and three
sentinels (`redis-server --sentinel`), each on a free port, with data in a temporary dir."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.processes import listening, redis_server, start, stop, wait_until

MASTER_NAME = "broker-test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class SentinelGroup:
    """The servers, by port; `master_port()` is where the sentinels say the master is."""

    servers: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    sentinels: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def sentinel_setting(self) -> str:
        """BROKER_REDIS_SENTINELS for this group."""
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinels)

    def master_port(self) -> int:
        """The master's port as a majority of the sentinels see it."""
        seen: dict[int, int] = {}
        for port in self.sentinels:
            try:
                host, master = sentinel(port).sentinel_get_master_addr_by_name(MASTER_NAME)
            except (redis.RedisError, TypeError):
                continue
            seen[int(master)] = seen.get(int(master), 0) + 1
        return max(seen, key=lambda p: seen[p]) if seen else 0

    def replica_port(self) -> int:
        return next(port for port in self.servers if port != self.master_port())

    def wait_for_new_master(self, old: int, seconds: float = 30) -> int:
        """Waits until the sentinels name another master and it accepts writes."""

        def promoted() -> bool:
            port = self.master_port()
            return port not in (0, old) and server(port).info("replication")["role"] == "master"

        wait_until(
            promoted, seconds, "the sentinels to promote the replica", ignoring=(redis.RedisError,)
        )
        return self.master_port()

    def wait_until_replica_in_sync(self, seconds: float = 20) -> None:
        replica = server(self.replica_port())
        wait_until(
            lambda: replica.info("replication").get("master_link_status") == "up",
            seconds,
            "the replica to sync",
            ignoring=(redis.RedisError,),
        )


def server(port: int, db: int = 0) -> redis.Redis:
    return redis.Redis(port=port, db=db, socket_timeout=2, socket_connect_timeout=2)


def sentinel(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=2, decode_responses=True)


@contextmanager
def sentinel_group(directory: Path) -> Iterator[SentinelGroup]:
    """Starts the group and stops every process it started, by pid."""
    group = SentinelGroup()
    try:
        master_port, replica_port = free_port(), free_port()
        for port in (master_port, replica_port):
            args = redis_server(port, directory)
            if port == replica_port:
                args += ["--replicaof", "127.0.0.1", str(master_port)]
            group.servers[port] = start(args, directory / f"redis-{port}.log")
        for _ in range(3):
            port = free_port()
            conf = directory / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
                f"sentinel failover-timeout {MASTER_NAME} 10000\n"
            )
            group.sentinels[port] = start(
                ["redis-server", str(conf), "--sentinel"], directory / f"sentinel-{port}.log"
            )
        for port, process in {**group.servers, **group.sentinels}.items():
            wait_until(
                lambda port=port: listening("127.0.0.1", port), 10, f"port {port}", process=process
            )
        group.wait_until_replica_in_sync()

        def all_sentinels_know_the_group() -> bool:
            # A sentinel that has not seen the replica yet has none to promote.
            return all(
                int(sentinel(p).sentinel_master(MASTER_NAME)["num-other-sentinels"]) == 2
                and [r["flags"] for r in sentinel(p).sentinel_slaves(MASTER_NAME)] == ["slave"]
                for p in group.sentinels
            )

        wait_until(
            all_sentinels_know_the_group,
            30,
            "the sentinels to find the group",
            ignoring=(redis.RedisError,),
        )
        yield group
    finally:
        for process in [*group.sentinels.values(), *group.servers.values()]:
            stop(process, timeout=5)


def fail_over(group: SentinelGroup) -> int:
    """SENTINEL FAILOVER; returns the new master's port once the old master is a replica
    (until the sentinels demote it, it still takes writes from connections it holds)."""
    old = group.master_port()
    deadline = time.monotonic() + 20
    while True:
        try:
            sentinel(next(iter(group.sentinels))).execute_command(
                "SENTINEL", "FAILOVER", MASTER_NAME
            )
            break
        except redis.ResponseError:  # NOGOODSLAVE while the replica is still syncing
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    new = group.wait_for_new_master(old)
    wait_until(
        lambda: server(old).info("replication")["role"] == "slave",
        30,
        "the sentinels to demote the old master",
        ignoring=(redis.RedisError,),
    )
    return new
