"""Fault drills on a multi-host deployment (issue 15): nothing lost, no wrong token served.

    sudo .venv/bin/python -m benchmarks.drills [--quick] [--only NAME ...] [--keep-logs]

Needs root (ip netns, a bridge, a private PostgreSQL run as the postgres user). Builds a
bridge and one network namespace per broker host (topology.py), runs a private Redis, a
private PostgreSQL cluster and the sandbox provider on the bridge, 2 gunicorn web hosts,
2 Celery worker hosts and 2 beat processes, seeds grants holding real short-lived sandbox
tokens, and then runs each drill while the load (load.py) plays services fetching tokens
through both web hosts. After each drill the invariants (checks.py) are checked and a
table of figures is printed. Exits non-zero when an invariant failed. Everything started
is stopped, and the network removed, however the run ends (Ctrl-C included).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import requests

from benchmarks.drills import checks, topology
from benchmarks.drills.load import Load, Result
from benchmarks.drills.topology import HOSTS, PG_ADDRESS, PG_PORT, REDIS_ADDRESS, Topology

DATABASE = "drills_broker"
BROKER_ROLE = "drills_broker"
BULK_USER = "drills-bulk"
VICTIM_USER = "drills-victim"
SUPERUSER_DSN = f"postgres://postgres@{PG_ADDRESS}:{PG_PORT}/{DATABASE}"


# How long a revocation's transaction may take between setting `revoked_at` and committing.
REVOCATION_COMMIT_SLACK = 1.0


def say(message: str) -> None:
    print(f"drills: {message}", flush=True)


def new_key() -> str:
    return f"k{secrets.token_hex(3)}:{base64.b64encode(secrets.token_bytes(32)).decode()}"


def broker_env(workdir: Path) -> dict[str, str]:
    web_hosts = [address for host, address in HOSTS.items() if host.startswith("web")]
    return {
        "PATH": f"{topology.VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(workdir),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "DJANGO_SETTINGS_MODULE": "broker.settings",
        "BROKER_ENV_FILE": "",
        "DEBUG": "0",
        "BROKER_ALLOW_HTTP": "1",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "BROKER_ENCRYPTION_KEYS": new_key(),
        "BROKER_PUBLIC_URL": f"http://{web_hosts[0]}:{topology.WEB_PORT}",
        "ALLOWED_HOSTS": ",".join(web_hosts),
        # nginx in front of each gunicorn (deploy/nginx.conf).
        "BROKER_TRUSTED_PROXIES": "1",
        "DATABASE_URL": f"postgres://{BROKER_ROLE}@{PG_ADDRESS}:{PG_PORT}/{DATABASE}",
        "REDIS_URL": f"redis://{REDIS_ADDRESS}:{topology.REDIS_PORT}/0",
        "BROKER_DATA_DIR": str(workdir / "data"),
        "BROKER_REFRESH_BEAT_SECONDS": "2",
        "BROKER_API_RATE_LIMIT": "1000000",
        "WEB_CONCURRENCY": "1",
        "GUNICORN_THREADS": "8",
        "BROKER_DB_POOL_MAX_SIZE": "8",
    }


@dataclass
class Run:
    topology: Topology
    sandbox_url: str
    load: Load
    grants: list[str]
    bulk_grants: set[str]
    victim_grant: str
    client_id: str
    quick: bool
    presented_twice: int = 0
    reused_late: int = 0
    lost: set[str] = field(default_factory=set)  # grants lost in earlier drills
    victim_revoked_at: float | None = None  # when the provider revoked it (epoch s)

    @property
    def env(self) -> dict[str, str]:
        return self.topology.broker_env

    def sandbox(self, path: str, payload: dict) -> dict:
        response = requests.post(f"{self.sandbox_url}{path}", json=payload, timeout=10)
        response.raise_for_status()
        return response.json()


def create_database() -> None:
    with psycopg.connect(
        f"postgres://postgres@{PG_ADDRESS}:{PG_PORT}/postgres", autocommit=True
    ) as conn:
        # Not a superuser: CONNECTION LIMIT applies to it (the refusing drill).
        conn.execute(f"CREATE ROLE {BROKER_ROLE} LOGIN")
        conn.execute(f"CREATE DATABASE {DATABASE} OWNER {BROKER_ROLE}")


def seed(run_env: dict[str, str], workdir: Path, sandbox_env: dict, count: int) -> dict:
    """Users, grants holding freshly minted sandbox tokens, a service client and its rule.

    Grants: `count` for 20 users (sandbox user alice's tokens), 100 for BULK_USER (bulk
    revocation), and one for VICTIM_USER holding bob's tokens (revoked upstream)."""
    topology.manage(run_env, "migrate", "--no-input", "-v", "0")
    os.environ.update(run_env)
    os.environ["DATABASE_URL"] = SUPERUSER_DSN
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    # The harness observes: a plain connection per check, opened after the drill (a pooled
    # one would be cut by the PostgreSQL drills before the broker's are).
    settings.DATABASES["default"]["OPTIONS"].pop("pool", None)

    from accounts.models import User
    from broker.models import Grant, ProviderApp
    from tests.sandbox_server import mint_tokens, store_minted

    call_command("loadproviders", str(workdir / "sandbox" / "providers.toml"), verbosity=0)
    app = ProviderApp.objects.get(slug="sandbox")

    def mint(username: str, n: int) -> list[dict]:
        out = workdir / f"tokens-{username}.json"
        return mint_tokens(sandbox_env, out, app.client_id, n, username)

    users = [User.objects.create_user(f"drills-{n}", password=None) for n in range(20)]
    bulk_user = User.objects.create_user(BULK_USER, password=None)
    owners = [users[n % 20] for n in range(count)] + [bulk_user] * 100
    grants = []
    for n, (owner, token) in enumerate(zip(owners, mint("alice", len(owners)), strict=True)):
        grants.append(Grant(user=owner, provider_app=app, external_account_id=f"drills-{n}"))
        grants[-1]._token = token  # type: ignore[attr-defined]
    victim = Grant(
        user=User.objects.create_user(VICTIM_USER, password=None),
        provider_app=app,
        external_account_id="drills-victim",
    )
    victim._token = mint("bob", 1)[0]  # type: ignore[attr-defined]
    grants.append(victim)
    for grant in grants:
        store_minted(grant, grant._token)  # type: ignore[attr-defined]
    Grant.objects.bulk_create(grants, batch_size=200)
    created = json.loads(topology.manage(run_env, "createserviceclient", "Drills", "--json"))
    topology.manage(run_env, "addaccessrule", created["client_id"], "--provider", "sandbox")
    return {
        "grants": [str(g.id) for g in grants],
        "bulk": {str(g.id) for g in grants if g.user.username == BULK_USER},
        "victim": str(victim.id),
        "client_id": created["client_id"],
        "client_secret": created["client_secret"],
    }


# -- the drills --------------------------------------------------------------------------
# Each takes the run, makes its fault, ends it, and returns the fault's end (epoch s).


def kill_and_restart(run: Run, host: str, down_seconds: float) -> float:
    run.topology.kill_host(host)
    say(f"{host} SIGKILLed; back in {down_seconds:.0f} s")
    time.sleep(down_seconds)
    run.topology.start_host(host)
    run.topology.wait_host_ready(host)
    ended = time.time()
    wait_for_redone_refreshes(run)
    return ended


# The refresh lock's timeout in the drills (2 x BROKER_PROVIDER_TIMEOUT 10 s + 10 s), and a
# margin for the request that redoes the refresh once it lapsed.
REDO_BOUND_SECONDS = 30 + 15


def refreshes_marked(run: Run) -> dict[str, int]:
    """The active grants whose stored token a refresh in flight, or cut short, may have
    replaced upstream, with the version it started from: their in-flight mark names the
    version stored (broker.refresh.doubt_marks, "Refreshes in doubt")."""
    from django.db import connection

    from broker.models import Grant
    from broker.refresh.redis_keys import in_flight_key

    connection.close()  # (the drill may have cut it)
    stored = {
        str(grant): version
        for grant, version in Grant.objects.filter(status="active").values_list(
            "id", "token_version"
        )
    }
    marks = run.topology.redis().mget([in_flight_key(g) for g in stored])
    return {
        grant: int(mark)
        for (grant, version), mark in zip(stored.items(), marks, strict=True)
        if mark is not None and int(mark) >= version
    }


def wait_for_redone_refreshes(run: Run) -> None:
    """A refresh the kill cut short leaves its grant in doubt (its stored token is not
    served) until the dead holder's lock lapses and a request redoes the refresh. The drill
    ends only once every refresh marked at the restart stored its result, so that the next
    drill's fault does not land on that window: a Redis flush in it would erase the doubt
    (docs/operations.md, troubleshooting: a double fault). The load goes on meanwhile, and
    those grants are asked for once a second, as services waiting for them would."""
    marked = refreshes_marked(run)
    started = time.monotonic()
    deadline = started + REDO_BOUND_SECONDS
    while marked:
        now_marked = refreshes_marked(run)
        marked = {g: v for g, v in marked.items() if now_marked.get(g) == v}
        if not marked:
            say(f"refreshes marked at the restart all stored {time.monotonic() - started:.0f} s on")
            return
        if time.monotonic() > deadline:
            say(f"still in doubt after {REDO_BOUND_SECONDS} s: {', '.join(marked)}")
            return
        for grant in marked:
            run.load.ask(grant)
        time.sleep(1)


def worker_killed(run: Run) -> float:
    # Refreshes take 1.5 s upstream, so the worker dies with some in flight.
    run.sandbox("/_sandbox/faults", {"mode": "slow", "delay": 1.5})
    time.sleep(4)
    try:
        return kill_and_restart(run, "worker1", 5)
    finally:
        run.sandbox("/_sandbox/faults", {"mode": "none"})


def web_killed(run: Run) -> float:
    return kill_and_restart(run, "web1", 5)


def redis_restarted(run: Run) -> float:
    redis = run.topology.processes.pop("redis")
    redis.stop()
    say("redis stopped; starting it again in 5 s")
    time.sleep(5)
    run.topology.start_redis()
    return time.time()


def redis_flushed(run: Run) -> float:
    run.topology.redis().flushall()
    return time.time()


def postgres_restarted(run: Run) -> float:
    run.topology.pg_ctl("restart", "-m", "fast")
    return time.time()


def postgres_refusing(run: Run) -> float:
    with psycopg.connect(SUPERUSER_DSN, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {DATABASE} CONNECTION LIMIT 0")
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
            [BROKER_ROLE],
        )
        say("PostgreSQL refuses the broker's connections for 20 s")
        time.sleep(20)
        conn.execute(f"ALTER DATABASE {DATABASE} CONNECTION LIMIT -1")
    return time.time()


def provider_faults(run: Run) -> float:
    for payload, seconds in (
        ({"mode": "error500"}, 10),
        ({"mode": "ratelimit", "retry_after": 3}, 10),
        ({"mode": "slow", "delay": 6}, 15),  # slow, within the broker's 10 s timeout
    ):
        say(f"provider fault {payload} for {seconds} s")
        run.sandbox("/_sandbox/faults", payload)
        time.sleep(seconds)
    run.sandbox("/_sandbox/faults", {"mode": "none"})
    end = time.time()
    say("provider revokes bob's tokens (the victim grant) upstream")
    run.victim_revoked_at = time.time()
    run.sandbox("/_sandbox/revoke-user", {"username": "bob"})
    return end


def provider_beyond_timeout(run: Run) -> float:
    """Answers that come after the broker gave up (12 s > BROKER_PROVIDER_TIMEOUT 10 s):
    the provider has rotated, the broker does not know the new refresh token."""
    run.sandbox("/_sandbox/faults", {"mode": "slow", "delay": 12})
    say("provider answers after 12 s, for 15 s")
    time.sleep(15)
    run.sandbox("/_sandbox/faults", {"mode": "none"})
    return time.time()


def worker_partitioned(run: Run) -> float:
    topology.partition_from("worker1", REDIS_ADDRESS)
    say("worker1 cut off from Redis for 30 s")
    try:
        time.sleep(30)
    finally:
        topology.heal_partition("worker1", REDIS_ADDRESS)
    return time.time()


def rolling_restart(run: Run) -> None:
    for host in HOSTS:
        run.topology.restart_host(host)


def key_rotation(run: Run) -> float:
    old = run.env["BROKER_ENCRYPTION_KEYS"]
    key = topology.manage(run.env, "generatekey").strip()
    run.env["BROKER_ENCRYPTION_KEYS"] = f"{key},{old}"
    say("new key first; rolling restart")
    rolling_restart(run)
    say(topology.manage(run.env, "reencrypt").strip().replace("\n", "; "))
    run.env["BROKER_ENCRYPTION_KEYS"] = key
    say("old key removed; rolling restart")
    rolling_restart(run)
    return time.time()


def sentinels_on(run: Run) -> None:
    """Before redis-failover: a replica and three sentinels join the Redis, and a rolling
    restart moves every host onto them (BROKER_REDIS_SENTINELS)."""
    run.topology.start_sentinels()
    run.env["BROKER_REDIS_SENTINELS"] = run.topology.sentinel_setting
    run.env["BROKER_REDIS_SENTINEL_MASTER"] = topology.SENTINEL_MASTER
    say(f"sentinels up ({run.topology.sentinel_setting}); rolling restart onto them")
    rolling_restart(run)


def redis_failover(run: Run) -> float:
    """The master's process is SIGKILLed; the sentinels promote the replica; the old one
    comes back (its AOF) as a replica. The fault's end is the kill: recovery counts the
    sentinels' detection and promotion."""
    old = run.topology.redis_master()
    name = run.topology.redis_process(old)
    killed = time.time()
    run.topology.processes[name].signal_group(signal.SIGKILL)
    run.topology.processes.pop(name).popen.wait(timeout=10)
    say(f"redis master {old} SIGKILLed")
    topology.wait_until(lambda: run.topology.redis_master() not in ("", old), 60, "a new master")
    new = run.topology.redis_master()
    say(f"sentinels promoted {new} {time.time() - killed:.1f} s after the kill")
    run.topology.start_redis(name, old)
    topology.wait_until(
        lambda: run.topology.redis_at(old).info("replication")["master_link_status"] == "up",
        60,
        f"{old} to replicate {new}",
    )
    say(f"{old} back as a replica of {new}")
    wait_for_redone_refreshes(run)
    return killed


def bulk_revocation(run: Run) -> float:
    say(
        topology.manage(run.env, "revokegrants", "--user", BULK_USER, "--reason", "drill")
        .strip()
        .replace("\n", "; ")
    )
    from django.db import connection

    from broker.models import Grant

    connection.close()
    topology.wait_until(
        lambda: (
            not Grant.objects.filter(user__username=BULK_USER).exclude(status="revoked").exists()
        ),
        120,
        "the 100 grants revoked",
    )
    return time.time()


DRILLS: dict[str, Callable[[Run], float]] = {
    "worker-killed": worker_killed,
    "web-killed": web_killed,
    "redis-restarted": redis_restarted,
    "redis-flushed": redis_flushed,
    "postgres-restarted": postgres_restarted,
    "postgres-refusing": postgres_refusing,
    "provider-faults": provider_faults,
    "provider-beyond-timeout": provider_beyond_timeout,
    "worker-partitioned": worker_partitioned,
    "key-rotation": key_rotation,
    "bulk-revocation": bulk_revocation,
    # Last: it leaves Redis replicated under sentinels, which the Redis drills above do not
    # expect (main() runs it after any other named drill).
    "redis-failover": redis_failover,
}
# What a drill needs before its load starts.
PREPARE: dict[str, Callable[[Run], None]] = {"redis-failover": sentinels_on}
QUICK = ["web-killed", "worker-killed", "redis-flushed", "bulk-revocation"]


# -- invariants --------------------------------------------------------------------------


def wait_for_audit(run: Run, started: float) -> int:
    """token.issued events recorded since `started` (each is committed before its answer is
    sent: this only waits for the database to be back after a drill that cut it)."""
    from datetime import UTC, datetime

    from django.db import connection

    from broker.models import AuditEvent

    since = datetime.fromtimestamp(started, UTC)
    last, stable_since = -1, time.monotonic()
    settle = 2.0
    deadline = time.monotonic() + 30 + settle
    while time.monotonic() < deadline:
        try:
            count = AuditEvent.objects.filter(
                action="token.issued", actor=run.client_id, at__gte=since
            ).count()
        except Exception:  # noqa: BLE001 - the database may still be coming back
            connection.close()
            time.sleep(1)
            continue
        if count != last:
            last, stable_since = count, time.monotonic()
        elif time.monotonic() - stable_since > settle:
            return count
        time.sleep(1)
    return last


def check(
    run: Run, name: str, results: list[Result], started: float, fault_end: float
) -> checks.Figures:
    from django.db import connection

    from broker.models import Grant

    connection.close()  # it may have been cut by the drill (PostgreSQL restarted)
    figures = checks.Figures(name, requests=len(results))
    figures.errors = Counter(r.kind for r in results if r.kind != "ok")
    figures.recovery = checks.recovery_time(results, fault_end, max(r.sent for r in results))
    figures.bad_5xx = sum(r.kind.startswith("bad-") for r in results)

    served = [r for r in results if r.kind == "ok"]
    history = checks.token_history(run.sandbox_url, sorted({r.digest for r in served}))
    # A revocation at the provider is announced to nobody (Atlassian has no revocation
    # notice): a broker learns of it at the grant's next refresh, so the victim's stored
    # token served meanwhile is counted apart, not as a broker fault.
    unannounced = [
        r
        for r in served
        if run.victim_revoked_at is not None
        and r.grant == run.victim_grant
        and r.sent >= run.victim_revoked_at
    ]
    stale, unknown = checks.stale_tokens([r for r in served if r not in unannounced], history)
    figures.stale_served = len(stale)
    figures.notes += stale
    late, _ = checks.stale_tokens(unannounced, history)
    if late:
        figures.notes.append(
            f"{len(late)} tokens of the victim grant served after the provider revoked it"
            " unannounced, before its next refresh found out (not counted as stale)"
        )
    if unknown:
        figures.notes.append(f"{unknown} served tokens unknown to the provider")
    late = history["refresh_tokens_reused_outside_window"]
    figures.refresh_twice, run.reused_late = late - run.reused_late, late
    twice = history["refresh_tokens_presented_twice"]
    figures.refresh_again_in_window = twice - run.presented_twice - figures.refresh_twice
    run.presented_twice = twice

    # A revocation takes effect when it commits, a few milliseconds after `revoked_at`
    # (set inside its transaction); a request sent in between may rightly be served. A
    # token counts as served after the revocation when its request was sent after another
    # request for the grant had been answered "revoked" (the commit was visible by then),
    # or more than REVOCATION_COMMIT_SLACK seconds after `revoked_at`.
    set_revoked = {
        str(g.id): g.revoked_at.timestamp() for g in Grant.objects.filter(revoked_at__isnull=False)
    }
    revoked_at = {grant: at + REVOCATION_COMMIT_SLACK for grant, at in set_revoked.items()}
    for r in results:
        if r.kind == "409-reconnect_required" and r.grant in revoked_at:
            revoked_at[r.grant] = min(revoked_at[r.grant], r.done)
    figures.served_after_revocation = sum(
        r.grant in revoked_at and r.sent > revoked_at[r.grant] for r in served
    )
    in_window = [
        r
        for r in served
        if r.grant in revoked_at and set_revoked[r.grant] < r.sent <= revoked_at[r.grant]
    ]
    if in_window:
        # A bulk job revokes one grant after the other: the next revocation's revoked_at
        # comes after this one's commit.
        times = sorted(set_revoked.values())
        for r in in_window:
            later = [t for t in times if t > set_revoked[r.grant]]
            figures.notes.append(
                f"token of grant {r.grant} sent {(r.sent - set_revoked[r.grant]) * 1000:.0f} ms "
                f"after its revoked_at, answered {(r.done - set_revoked[r.grant]) * 1000:.0f} ms "
                f"after, by {r.host}; next revocation "
                + (f"{(later[0] - set_revoked[r.grant]) * 1000:.0f} ms after" if later else "none")
            )
    # The victim may be gone only once the provider revoked it (provider-faults).
    expected_gone = (
        run.bulk_grants
        | run.lost
        | ({run.victim_grant} if run.victim_revoked_at is not None else set())
    )
    for grant in Grant.objects.exclude(status="active"):
        gid = str(grant.id)
        if gid in expected_gone:
            continue
        run.lost.add(gid)
        figures.lost_grants += 1
        figures.notes.append(
            f"grant {gid} {grant.status}: {grant.last_error or grant.revoked_reason}"
        )
    victim = Grant.objects.get(id=run.victim_grant)
    if victim.status != "active":
        figures.notes.append(f"victim grant {victim.status}: {victim.last_error}")

    events = wait_for_audit(run, started)
    figures.audit_lost = max(0, len(served) - events)
    if events != len(served):
        figures.notes.append(f"token.issued events {events} for {len(served)} tokens served")
    return figures


def run_drill(run: Run, name: str) -> checks.Figures:
    settle = 8 if run.quick else 15
    say(f"== {name}")
    if name in PREPARE:
        PREPARE[name](run)
    started = time.time()
    run.load.start()
    try:
        time.sleep(4 if run.quick else 8)
        fault_end = DRILLS[name](run)
        time.sleep(settle)
    finally:
        run.load.stop()
    results = run.load.since(started)
    label = f"{name} (pgbouncer)" if "BROKER_DB_BEHIND_PGBOUNCER" in run.env else name
    figures = check(run, label, results, started, fault_end)
    checks.print_table([figures])
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    parser.add_argument("--only", nargs="+", choices=list(DRILLS), default=None)
    parser.add_argument("--grants", type=int, default=None, help="besides the 101 revoked")
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument(
        "--pgbouncer",
        action="store_true",
        help="the broker reaches PostgreSQL through PgBouncer in transaction pooling",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("drills: needs root (ip netns, bridge, a PostgreSQL cluster)", file=sys.stderr)
        return 2
    names = args.only or (QUICK if args.quick else list(DRILLS))
    names = sorted(names, key=lambda name: name == "redis-failover")  # see DRILLS
    grant_count = args.grants or (100 if args.quick else 300)
    token_seconds = 60 if args.quick else 90
    bound = 170 + 60 * len(names) if args.quick else 300 + 150 * len(names)

    def give_up(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum} (time bound {bound} s)")

    signal.signal(signal.SIGTERM, give_up)
    signal.signal(signal.SIGALRM, give_up)
    signal.alarm(bound)
    workdir = Path(tempfile.mkdtemp(prefix="broker-drills-"))
    os.chmod(workdir, 0o755)
    net = Topology(workdir, broker_env(workdir))
    rows: list[checks.Figures] = []
    started = time.monotonic()
    try:
        topology.create_network()
        net.start_redis()
        net.start_postgres()
        create_database()
        if args.pgbouncer:
            net.start_pgbouncer(users=(BROKER_ROLE, "postgres"))
            net.broker_env["DATABASE_URL"] = (
                f"postgres://{BROKER_ROLE}@{topology.PGBOUNCER_ADDRESS}:"
                f"{topology.PGBOUNCER_PORT}/{DATABASE}"
            )
            net.broker_env["BROKER_DB_BEHIND_PGBOUNCER"] = "1"
        sandbox_url, _ = net.start_sandbox(token_seconds)
        say(f"network, Redis, PostgreSQL and the sandbox up ({time.monotonic() - started:.0f} s)")
        seeded = seed(net.broker_env, workdir, net.sandbox_env, grant_count)
        topology.manage(net.broker_env, "collectstatic", "--no-input", "-v", "0")
        for host in HOSTS:
            net.start_host(host)
        for host in HOSTS:
            net.wait_host_ready(host)
        say(f"{len(seeded['grants'])} grants, 6 hosts up ({time.monotonic() - started:.0f} s)")
        load = Load(
            {h: net.web_url(h) for h in HOSTS if h.startswith("web")},
            seeded["grants"],
            seeded["client_id"],
            seeded["client_secret"],
            threads=8,
            rate=25 if args.quick else 40,
        )
        run = Run(
            net,
            sandbox_url,
            load,
            seeded["grants"],
            seeded["bulk"],
            seeded["victim"],
            seeded["client_id"],
            args.quick,
        )
        for name in names:
            rows.append(run_drill(run, name))
    except KeyboardInterrupt as exc:
        say(f"interrupted: {exc}")
    except Exception as exc:
        say(f"FAILED: {type(exc).__name__}: {exc}")
        args.keep_logs = True
    finally:
        signal.alarm(0)
        net.close()
    print()
    checks.print_table(rows)
    say(f"{len(rows)}/{len(names)} drills in {time.monotonic() - started:.0f} s; logs {workdir}")
    if not args.keep_logs:
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
    return 0 if len(rows) == len(names) and all(r.passed for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
