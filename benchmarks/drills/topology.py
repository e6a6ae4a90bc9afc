"""The drill's private network and every process on it.

A Linux bridge in the root namespace carries the services' addresses (Redis, PostgreSQL,
the sandbox provider, each on its own address so one can be cut off alone); each broker
host (web, worker, beat) lives in a network namespace joined to the bridge by a veth
pair. Every address is in the benchmarking range 198.18.0.0/15 and exists only on this
bridge. Everything started here is recorded and stopped by `Topology.close()`.
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests

from tests import front_server, processes

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
BRIDGE = "drills-br0"
PREFIX = 24
GATEWAY = "198.18.0.1"
REDIS_ADDRESS, REDIS_PORT = "198.18.0.2", 26379
PG_ADDRESS, PG_PORT = "198.18.0.3", 25432
SANDBOX_ADDRESS, SANDBOX_PORT = "198.18.0.4", 28001
# Redis Sentinel (the redis-failover drill): a replica of the Redis above, three sentinels.
REPLICA_ADDRESS = "198.18.0.5"
SENTINEL_ADDRESSES, SENTINEL_PORT = ("198.18.0.6", "198.18.0.7", "198.18.0.8"), 26390
SENTINEL_MASTER = "drills"
# PgBouncer in front of PostgreSQL (--pgbouncer).
PGBOUNCER_ADDRESS, PGBOUNCER_PORT = "198.18.0.9", 26432
WEB_PORT = 8000  # nginx (deploy/nginx.conf), on the host's address
GUNICORN_PORT = 8001  # gunicorn behind it, on the host's loopback
PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), default=Path("/usr/lib/postgresql"))
# name -> (namespace address, role)
HOSTS = {
    "web1": "198.18.0.11",
    "web2": "198.18.0.12",
    "worker1": "198.18.0.21",
    "worker2": "198.18.0.22",
    "beat1": "198.18.0.31",
    "beat2": "198.18.0.32",
}


def sh(*args: str, check: bool = True, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=60, **kwargs)  # type: ignore[call-overload]


def namespace(host: str) -> str:
    return f"drills-{host}"


def wait_until(condition: Callable[[], bool], seconds: float, what: str) -> float:
    """Polls `condition`; returns the seconds it took, or raises after `seconds`. A service
    still starting answers with anything: any exception counts as "not yet"."""
    return processes.wait_until(condition, seconds, what, ignoring=(Exception,), interval=0.2)


def remove_network() -> None:
    """Deletes the namespaces and bridge of this harness (a previous run's leftovers too);
    first kills whatever still runs inside those namespaces (only drills start processes
    there)."""
    existing = sh("ip", "netns", "list", check=False).stdout.split()
    for host in HOSTS:
        name = namespace(host)
        if name not in existing:
            continue
        for pid in sh("ip", "netns", "pids", name, check=False).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        sh("ip", "netns", "del", name, check=False)
        sh("ip", "link", "del", f"drv-{host}", check=False)
    sh("ip", "link", "del", BRIDGE, check=False)


def create_network() -> None:
    remove_network()
    sh("ip", "link", "add", BRIDGE, "type", "bridge")
    services = (GATEWAY, REDIS_ADDRESS, PG_ADDRESS, SANDBOX_ADDRESS, REPLICA_ADDRESS)
    for address in (*services, *SENTINEL_ADDRESSES, PGBOUNCER_ADDRESS):
        sh("ip", "addr", "add", f"{address}/{PREFIX}", "dev", BRIDGE)
    sh("ip", "link", "set", BRIDGE, "up")
    for host, address in HOSTS.items():
        name, veth = namespace(host), f"drv-{host}"
        sh("ip", "netns", "add", name)
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
        sh("ip", "link", "set", veth, "master", BRIDGE, "up")
        sh("ip", "-n", name, "addr", "add", f"{address}/{PREFIX}", "dev", "eth0")
        sh("ip", "-n", name, "link", "set", "eth0", "up")
        sh("ip", "-n", name, "link", "set", "lo", "up")


def partition_from(host: str, address: str) -> None:
    """Packets from `host` to `address` are dropped (a blackhole route in its namespace)."""
    sh("ip", "-n", namespace(host), "route", "add", "blackhole", f"{address}/32")


def heal_partition(host: str, address: str) -> None:
    sh("ip", "-n", namespace(host), "route", "del", "blackhole", f"{address}/32", check=False)


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    log_offset: int = 0  # where this run of the process starts in its (appended) log

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal_group(self, signum: int) -> None:
        """Its whole process group (started with a session of its own): gunicorn's and
        Celery's children go with their parent."""
        if self.alive():
            try:
                os.killpg(self.popen.pid, signum)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM to the main process only (a graceful stop: gunicorn's master and Celery's
        main process let their children finish what they are doing), then SIGKILL to the
        group if it takes longer than `timeout`, and to children that outlived it."""
        processes.stop(self.popen, timeout, group=True)


@dataclass
class Topology:
    workdir: Path
    broker_env: dict[str, str]
    processes: dict[str, Process] = field(default_factory=dict)
    pg_data: Path | None = None
    sentinels: bool = False  # running: the master is where they say

    # -- generic -------------------------------------------------------------------------

    def start(
        self, name: str, args: list[str], *, host: str | None = None, env: dict | None = None
    ) -> Process:
        command = ["ip", "netns", "exec", namespace(host), *args] if host else args
        log = self.workdir / f"{name}.log"
        offset = log.stat().st_size if log.exists() else 0
        popen = processes.start(
            command, log, env=env if env is not None else self.broker_env, own_session=True
        )
        process = Process(name, popen, log, offset)
        self.processes[name] = process
        return process

    def close(self) -> None:
        """Stops everything, in reverse order of starting; never raises."""
        for process in reversed(list(self.processes.values())):
            try:
                process.stop()
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                print(f"drills: stopping {process.name}: {exc}", file=sys.stderr)
        self.stop_postgres()
        remove_network()

    # -- Redis ---------------------------------------------------------------------------

    def start_redis(self, name: str = "redis", address: str = REDIS_ADDRESS) -> None:
        """A Redis server named `name` on `address`; with sentinels running, they make it a
        replica of their master if it is not that master."""
        data = self.workdir / name
        data.mkdir(exist_ok=True)
        self.start(
            name,
            [
                "redis-server",
                "--bind",
                address,
                "--port",
                str(REDIS_PORT),
                "--dir",
                str(data),
                # Persistence on: a restart keeps what was written (a flush is its own drill).
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--protected-mode",
                "no",
                # Its connections leave from the bridge's first address: as a replica it
                # tells the master (and so the sentinels) where it really listens.
                "--replica-announce-ip",
                address,
            ],
            env={"PATH": os.environ["PATH"]},
        )
        wait_until(lambda: self.redis_at(address).ping(), 20, name)

    def redis_at(self, address: str):  # noqa: ANN201 - redis.Redis
        import redis

        return redis.Redis(host=address, port=REDIS_PORT, socket_timeout=5)

    def redis(self):  # noqa: ANN201 - redis.Redis
        """The master: the one Redis, or the one the sentinels name."""
        return self.redis_at(self.redis_master() if self.sentinels else REDIS_ADDRESS)

    @property
    def sentinel_setting(self) -> str:
        """BROKER_REDIS_SENTINELS for the broker hosts."""
        return ",".join(f"{address}:{SENTINEL_PORT}" for address in SENTINEL_ADDRESSES)

    def redis_master(self) -> str:
        """The master's address as a majority of the sentinels see it ("" if none does)."""
        import redis

        seen: Counter[str] = Counter()
        for address in SENTINEL_ADDRESSES:
            client = redis.Redis(
                host=address, port=SENTINEL_PORT, socket_timeout=2, decode_responses=True
            )
            try:
                master = client.sentinel_get_master_addr_by_name(SENTINEL_MASTER)
            except redis.RedisError:
                continue
            finally:
                client.close()
            if master:
                seen[str(master[0])] += 1
        best = seen.most_common(1)
        return best[0][0] if best and best[0][1] >= 2 else ""

    def redis_process(self, address: str) -> str:
        return "redis" if address == REDIS_ADDRESS else "redis-replica"

    def start_sentinels(self) -> None:
        """A replica of the Redis (REPLICA_ADDRESS) and three sentinels watching it, each on
        its own bridge address; waits until the sentinels know the replica and each other."""
        self.start_redis("redis-replica", REPLICA_ADDRESS)
        self.redis_at(REPLICA_ADDRESS).replicaof(REDIS_ADDRESS, REDIS_PORT)
        for n, address in enumerate(SENTINEL_ADDRESSES, 1):
            conf = self.workdir / f"sentinel{n}.conf"
            conf.write_text(
                f"bind {address}\nport {SENTINEL_PORT}\nprotected-mode no\n"
                f"sentinel announce-ip {address}\n"
                f"dir {self.workdir}\n"
                f"sentinel monitor {SENTINEL_MASTER} {REDIS_ADDRESS} {REDIS_PORT} 2\n"
                f"sentinel down-after-milliseconds {SENTINEL_MASTER} 2000\n"
                f"sentinel failover-timeout {SENTINEL_MASTER} 20000\n"
            )
            self.start(
                f"sentinel{n}",
                ["redis-server", str(conf), "--sentinel"],
                env={"PATH": os.environ["PATH"]},
            )

        def group_known() -> bool:
            import redis

            for address in SENTINEL_ADDRESSES:
                client = redis.Redis(
                    host=address, port=SENTINEL_PORT, socket_timeout=2, decode_responses=True
                )
                master = client.sentinel_master(SENTINEL_MASTER)
                replicas = client.sentinel_slaves(SENTINEL_MASTER)
                client.close()
                if int(master["num-other-sentinels"]) != 2 or [r["flags"] for r in replicas] != [
                    "slave"
                ]:
                    return False
            link = self.redis_at(REPLICA_ADDRESS).info("replication")["master_link_status"]
            return bool(link == "up")

        wait_until(group_known, 60, "the sentinels to know the replica and each other")
        self.sentinels = True

    # -- PgBouncer -----------------------------------------------------------------------

    def start_pgbouncer(self, users: tuple[str, ...]) -> None:
        """PgBouncer in transaction pooling on its bridge address, in front of PostgreSQL
        (tests/pgbouncer_server.py's configuration)."""
        from tests.pgbouncer_server import command

        args = command(
            self.workdir / "pgbouncer",
            server_host=PG_ADDRESS,
            server_port=PG_PORT,
            listen_addr=PGBOUNCER_ADDRESS,
            port=PGBOUNCER_PORT,
            pool_size=40,
            users=users,
        )
        self.start("pgbouncer", args, env={"PATH": os.environ["PATH"]})
        wait_until(lambda: processes.listening(PGBOUNCER_ADDRESS, PGBOUNCER_PORT), 20, "pgbouncer")

    # -- PostgreSQL ----------------------------------------------------------------------

    def pg_ctl(self, *args: str) -> None:
        assert self.pg_data is not None
        sh(
            "runuser",
            "-u",
            "postgres",
            "--",
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.pg_data),
            "-l",
            str(self.workdir / "postgresql.log"),
            "-w",
            "-t",
            "60",
            *args,
        )

    def start_postgres(self) -> None:
        """A private cluster (initdb into the work directory), run as the postgres user,
        listening on its bridge address only; trust for the bridge's range."""
        postgres = pwd.getpwnam("postgres")
        self.pg_data = self.workdir / "pgdata"
        os.chown(self.workdir, postgres.pw_uid, postgres.pw_gid)
        (self.workdir / "postgresql.log").touch()
        os.chown(self.workdir / "postgresql.log", postgres.pw_uid, postgres.pw_gid)
        sh(
            "runuser",
            "-u",
            "postgres",
            "--",
            str(PG_BIN / "initdb"),
            "-D",
            str(self.pg_data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
        )
        with (self.pg_data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"listen_addresses = '{PG_ADDRESS}'\nport = {PG_PORT}\n"
                f"unix_socket_directories = '{self.workdir}'\nmax_connections = 300\n"
                "fsync = off\nfull_page_writes = off\nshared_buffers = 64MB\n"
            )
        (self.pg_data / "pg_hba.conf").write_text(
            "local all all trust\nhost all all 198.18.0.0/15 trust\n"
        )
        self.pg_ctl("start")

    def stop_postgres(self) -> None:
        if self.pg_data is not None and (self.pg_data / "postmaster.pid").exists():
            try:
                self.pg_ctl("stop", "-m", "immediate")
            except Exception as exc:  # noqa: BLE001
                print(f"drills: stopping PostgreSQL: {exc}", file=sys.stderr)

    # -- the sandbox provider ------------------------------------------------------------

    def start_sandbox(self, access_token_seconds: int) -> tuple[str, Path]:
        """Migrated, registered for the broker, serving on its bridge address; returns its
        URL and the providers file to load into the broker."""
        from tests.sandbox_server import MANAGE, sandbox_env

        data = self.workdir / "sandbox"
        data.mkdir(exist_ok=True)
        url = f"http://{SANDBOX_ADDRESS}:{SANDBOX_PORT}"
        env = sandbox_env(data, SANDBOX_PORT, access_token_seconds)
        env["SANDBOX_PUBLIC_URL"] = url
        for key in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE_BROKER"):
            env.pop(key, None)
        # Atlassian's ten-minute reuse window for consumed refresh tokens (PROVIDERS.md):
        # a refresh whose answer was lost (worker killed, answer past the broker's
        # timeout) can be redone; the invariant counts reuses outside the window.
        env["DJANGO_SETTINGS_MODULE"] = "tests.sandbox_reuse_window_settings"
        providers = data / "providers.toml"
        for args in (
            ["migrate", "--no-input", "-v", "0"],
            ["sandbox_setup", "--broker-url", self.broker_env["BROKER_PUBLIC_URL"]]
            + ["--out", str(providers)],
        ):
            sh(sys.executable, str(MANAGE), *args, env=env, cwd=ROOT)
        self.sandbox_env = env
        self.start(
            "sandbox",
            [sys.executable, str(MANAGE), "runserver", f"{SANDBOX_ADDRESS}:{SANDBOX_PORT}"]
            + ["--noreload"],
            env=env,
        )
        wait_until(
            lambda: requests.get(f"{url}/_sandbox/counters", timeout=2).ok, 60, "the sandbox"
        )
        return url, providers

    # -- broker hosts --------------------------------------------------------------------

    def start_host(self, host: str) -> Process:
        if host.startswith("web"):
            self.start_front_server(host)
            args = [str(VENV_BIN / "gunicorn"), "--bind", f"127.0.0.1:{GUNICORN_PORT}"]
        elif host.startswith("worker"):
            args = [str(VENV_BIN / "celery"), "-A", "broker", "worker", "--loglevel", "INFO"]
            args += ["-c", "2", "-n", f"drills-{host}@%h"]
        else:
            args = [str(VENV_BIN / "celery"), "-A", "broker", "beat", "--loglevel", "INFO"]
            args += ["--schedule", str(self.workdir / f"{host}-schedule")]
        return self.start(host, args, host=host)

    def start_front_server(self, host: str) -> None:
        """nginx with deploy/nginx.conf on the web host's address, in front of its gunicorn;
        left running when gunicorn alone restarts (it answers 503 with Retry-After meanwhile)."""
        name = f"{host}-nginx"
        if name in self.processes and self.processes[name].alive():
            return
        prefix = self.workdir / name
        popen = front_server.start(
            WEB_PORT,
            f"127.0.0.1:{GUNICORN_PORT}",
            prefix,
            address=HOSTS[host],
            wrapper=["ip", "netns", "exec", namespace(host)],
            own_session=True,
        )
        self.processes[name] = Process(name, popen, prefix / "nginx.log")

    def web_url(self, host: str) -> str:
        return f"http://{HOSTS[host]}:{WEB_PORT}"

    def wait_host_ready(self, host: str, seconds: float = 90) -> None:
        process = self.processes[host]
        marker = b"maxinterval" if host.startswith("beat") else b" ready."

        def ready() -> bool:
            if host.startswith("web"):
                return requests.get(f"{self.web_url(host)}/readyz", timeout=2).status_code == 200
            return marker in process.log.read_bytes()[process.log_offset :]

        wait_until(lambda: process.alive() and ready(), seconds, f"{host} ready")

    def kill_host(self, host: str) -> None:
        """SIGKILL to every process in the host's namespace, as when the machine dies."""
        for pid in sh("ip", "netns", "pids", namespace(host), check=False).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        for name in (host, f"{host}-nginx"):
            if name in self.processes:
                self.processes[name].popen.wait(timeout=10)

    def restart_host(self, host: str) -> None:
        old = self.processes.pop(host)
        old.stop()
        self.start_host(host)
        self.wait_host_ready(host)


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)}:\n{result.stdout}\n{result.stderr}")
    return result.stdout
