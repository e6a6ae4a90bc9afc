"""Restore drill (called by .ci/run after the smoke runs): a PostgreSQL dump of a working
broker, restored into a fresh PostgreSQL cluster, serves the same grants with the same keys,
and nothing without them (docs/backups.md).

- the broker of this checkout (the virtualenv this script runs in, or `--venv PATH`) with
  DEBUG=0 on a database of its own in the PostgreSQL on 127.0.0.1:5432
  (RESTORE_DRILL_DATABASE_URL, dropped and created) and Redis db RESTORE_DRILL_REDIS_URL
  (flushed); gunicorn with gunicorn.conf.py, the sandbox provider issuing 1-hour tokens;
- a user consents at the sandbox; a service client and its access rule are made with
  manage.py; the service gets the user's token; the broker is stopped;
- `pg_dump -Fc` of that database; the plain SQL of the dump must not hold the token served,
  the provider app's client secret or the service's secret;
- a fresh cluster: `initdb` into a temporary directory (as the postgres user when run as
  root) and `postgres` on a free loopback port; `pg_restore` into it; the Redis db flushed
  (Redis holds nothing to restore);
- gunicorn against the restored database with the same BROKER_ENCRYPTION_KEYS and
  SECRET_KEY: the service, created before the dump, authenticates with its secret, lists
  the same grants and is served the same access token, which the provider accepts;
- gunicorn with the same key id but another key: the token is not served (a clear error,
  never a token), and the restored grant is still whole for the right keys afterwards.

Every process it started is stopped by its pid and the cluster's directory removed however
it ends; the whole run is bounded by RESTORE_DRILL_TIMEOUT seconds. It prints a table of
what was checked; any failure exits non-zero with the logs' last lines.

    .venv/bin/python scripts/restore_drill.py [--venv PATH]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

import smoke_production  # noqa: E402
from smoke_production import (  # noqa: E402
    HTTP_TIMEOUT,
    USER,
    Run,
    SmokeFailure,
    existing_venv,
    require,
    wait_until,
)

from tests import processes  # noqa: E402
from tests.sandbox_server import free_port, launch_sandbox, wait_until_up  # noqa: E402

DATABASE_URL = os.environ.get(
    "RESTORE_DRILL_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/broker_restoredrill"
)
REDIS_URL = os.environ.get("RESTORE_DRILL_REDIS_URL", "redis://127.0.0.1:6379/15")
TIMEOUT_SECONDS = int(os.environ.get("RESTORE_DRILL_TIMEOUT", "180"))
# Long enough that no refresh happens during the drill: the token served after the restore
# is the one stored before the dump.
ACCESS_TOKEN_SECONDS = 3600
# The restored cluster's database (any name: a restore need not keep the old one).
RESTORED_DATABASE = "broker"


def step(message: str) -> None:
    print(f"restore drill: {message}", flush=True)


def postgres_bindir() -> Path:
    """The newest PostgreSQL server installed (Debian's layout), for initdb and postgres;
    its pg_dump and pg_restore read any older server's dumps."""
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda path: int(path.parent.parent.name),
    )
    require(versions, "no PostgreSQL server under /usr/lib/postgresql (apt-get install postgresql)")
    return versions[-1].parent


class DrillRun(Run):
    """The smoke run's Run, on the drill's database and Redis, with gunicorn answering
    directly on loopback (no front: the drill is about the data, not the traffic)."""

    def __init__(self, workdir: Path, venv: Path) -> None:
        super().__init__(workdir, venv)
        self.url = f"http://127.0.0.1:{self.web_port}"
        self.env |= {
            "BROKER_PUBLIC_URL": self.url,
            "BROKER_TRUSTED_PROXIES": "0",
            "DATABASE_URL": DATABASE_URL,
            "REDIS_URL": REDIS_URL,
            "WEB_CONCURRENCY": "1",
        }

    def start_web(self, name: str, **env: str) -> None:
        """gunicorn (gunicorn.conf.py) with `env` over the run's settings, until /readyz."""
        log_file = self.log(name)
        self.processes[name] = processes.start(
            self.command(*self.web_command()), log_file, env={**self.env, **env}
        )
        step(f"started {name} (pid {self.processes[name].pid})")
        wait_until(
            lambda: processes.answers(f"{self.url}/readyz"),
            60,
            f"{name} /readyz",
            process=self.processes[name],
            log_file=log_file,
        )

    def stop_web(self, name: str) -> None:
        processes.stop(self.processes.pop(name), timeout=15)


class FreshCluster:
    """A PostgreSQL cluster of its own: initdb into `directory`, postgres on a free loopback
    port (TCP only), as the postgres user when this runs as root (postgres refuses root)."""

    def __init__(self, directory: Path, log_file: Path) -> None:
        self.bindir = postgres_bindir()
        self.directory = directory
        self.log_file = log_file
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.user = "postgres" if os.geteuid() == 0 else None
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/{RESTORED_DATABASE}"

    def _as_owner(self) -> dict[str, Any]:
        return {"user": self.user, "group": self.user} if self.user else {}

    def create(self) -> None:
        self.directory.mkdir(mode=0o700)
        if self.user:
            owner = pwd.getpwnam(self.user)
            os.chown(self.directory, owner.pw_uid, owner.pw_gid)
        with self.log_file.open("ab") as log:
            subprocess.run(
                [str(self.bindir / "initdb"), "-D", str(self.directory), "-U", "postgres"]
                + ["--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"],
                stdout=log,
                stderr=subprocess.STDOUT,
                check=True,
                timeout=60,
                **self._as_owner(),
            )
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.directory)]
                + ["-p", str(self.port), "-c", "listen_addresses=127.0.0.1"]
                + ["-c", "unix_socket_directories="],
                stdout=log,
                stderr=subprocess.STDOUT,
                **self._as_owner(),
            )
        step(f"fresh cluster: {self.bindir.parent.name}, port {self.port} (pid {self.process.pid})")
        wait_until(
            lambda: (
                subprocess.run(
                    [str(self.bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)]
                ).returncode
                == 0
            ),
            30,
            "the fresh cluster to accept connections",
            process=self.process,
            log_file=self.log_file,
        )
        maintenance = f"postgres://postgres@127.0.0.1:{self.port}/postgres"
        with psycopg.connect(maintenance, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{RESTORED_DATABASE}"')

    def remove(self) -> None:
        """Fast shutdown (SIGINT) by pid, SIGKILL after 15 s; then its directory goes."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.directory, ignore_errors=True)


@dataclass
class Service:
    client_id: str
    client_secret: str

    def broker_token(self, run: Run) -> requests.Response:
        return requests.post(
            f"{run.url}/api/v1/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=(self.client_id, self.client_secret),
            timeout=HTTP_TIMEOUT,
        )

    def call(self, run: Run, method: str, path: str, **kwargs: Any) -> requests.Response:
        token = self.broker_token(run)
        require(token.status_code == 200, f"oauth/token: {token.status_code} {token.text}")
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        return requests.request(
            method, f"{run.url}{path}", headers=headers, timeout=HTTP_TIMEOUT, **kwargs
        )

    def grants(self, run: Run) -> list[dict[str, Any]]:
        """What of each grant a restore must keep (not its last use, which moves)."""
        response = self.call(run, "GET", "/api/v1/grants")
        require(response.status_code == 200, f"grants: {response.status_code} {response.text}")
        body = response.json()
        rows = body["grants"]
        keep = ("id", "user", "provider", "status", "account", "scopes", "resources")
        return [{name: row[name] for name in keep} for row in rows]

    def access_token(self, run: Run) -> requests.Response:
        return self.call(
            run, "POST", "/api/v1/access-token", json={"user": USER, "provider": "sandbox"}
        )


class Checks:
    """The table printed at the end: what was checked, and what was seen."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str]] = []

    def passed(self, check: str, seen: str) -> None:
        self.rows.append((check, seen))
        step(f"ok: {check} ({seen})")

    def print(self) -> None:
        width = max(len(check) for check, _ in self.rows)
        print(f"{'check'.ljust(width)}  seen")
        for check, seen in self.rows:
            print(f"{check.ljust(width)}  {seen}")


def new_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def tool(bindir: Path, *args: str) -> str:
    """A PostgreSQL client program; its output, or SmokeFailure with what it said."""
    result = subprocess.run(
        [str(bindir / args[0]), *args[1:]], capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        raise SmokeFailure(f"{' '.join(args[:2])} failed:\n{result.stderr}")
    return result.stdout


def the_broker_in_use(run: DrillRun, checks: Checks) -> tuple[Service, list[dict[str, Any]], str]:
    """A grant from a consent, a service with a rule, the token served: the state to back up."""
    # The drill's own database in the usual cluster.
    smoke_production.fresh_database(DATABASE_URL)
    smoke_production.flush_redis(REDIS_URL)
    smoke_production.release(run)
    run.start_web("web")
    run.sandbox = launch_sandbox(run.workdir / "sandbox", run.url, ACCESS_TOKEN_SECONDS)
    wait_until_up(run.sandbox)
    run.run("python", "manage.py", "loadproviders", str(run.sandbox.providers_file))
    smoke_production.consent(run, run.sandbox)
    created = json.loads(run.run("python", "manage.py", "createserviceclient", "Drill", "--json"))
    service = Service(created["client_id"], created["client_secret"])
    run.run("python", "manage.py", "addaccessrule", service.client_id, "--provider", "sandbox")
    grants = service.grants(run)
    require(len(grants) == 1 and grants[0]["status"] == "active", f"grants before: {grants}")
    served = service.access_token(run)
    require(served.status_code == 200, f"access-token: {served.status_code} {served.text}")
    token = str(served.json()["access_token"])
    checks.passed(
        "before: a consent's grant, a service, a token served", f"grant {grants[0]['id']}"
    )
    run.stop_web("web")
    return service, grants, token


def dump(run: DrillRun, bindir: Path, secrets_held: dict[str, str], checks: Checks) -> Path:
    """`pg_dump -Fc`, and the proof that its SQL holds none of the secrets."""
    path = run.workdir / "broker.dump"
    started = time.monotonic()
    tool(bindir, "pg_dump", "-Fc", "-f", str(path), "-d", DATABASE_URL)
    checks.passed(
        "pg_dump -Fc of the broker's database",
        f"{path.stat().st_size // 1024} KiB in {time.monotonic() - started:.1f}s",
    )
    sql = tool(bindir, "pg_restore", "-f", "-", str(path))
    require("broker_grant" in sql, "the dump's SQL has no grant table: not the broker's database")
    found = [name for name, value in secrets_held.items() if value in sql]
    require(not found, f"the dump holds in plain text: {', '.join(found)}")
    checks.passed("the dump holds no secret in plain text", ", ".join(secrets_held))
    return path


def restore(bindir: Path, cluster: FreshCluster, path: Path, checks: Checks) -> None:
    started = time.monotonic()
    tool(bindir, "pg_restore", "--no-owner", "--exit-on-error", "-d", cluster.url, str(path))
    checks.passed(
        "pg_restore into a fresh cluster",
        f"{cluster.bindir.parent.name} on port {cluster.port}, {time.monotonic() - started:.1f}s",
    )


def the_restored_broker(
    run: DrillRun,
    restored_url: str,
    service: Service,
    grants: list[dict[str, Any]],
    token: str,
    checks: Checks,
) -> None:
    """The same keys: the same service, grants and token; another key: no token."""
    run.env["DATABASE_URL"] = restored_url
    # Redis holds nothing a restore needs (locks, limits, metrics, Celery's queue).
    smoke_production.flush_redis(REDIS_URL)
    run.run("python", "manage.py", "migrate", "--check", "-v", "0")
    checks.passed("the restored schema is complete", "migrate --check: nothing to apply")

    run.start_web("restored")
    authenticated = service.broker_token(run)
    require(
        authenticated.status_code == 200,
        f"the service's secret was refused: {authenticated.status_code} {authenticated.text}",
    )
    checks.passed("the service made before the dump authenticates", "oauth/token 200")
    listed = service.grants(run)
    require(listed == grants, f"grants after the restore: {listed}, before: {grants}")
    checks.passed("the same grants are listed", f"{len(listed)} grant(s), same ids and status")
    served = service.access_token(run)
    require(served.status_code == 200, f"access-token: {served.status_code} {served.text}")
    require(served.json()["access_token"] == token, "another token than before the dump")
    assert run.sandbox is not None
    require(smoke_production.provider_accepts(run.sandbox, token), "the provider refused the token")
    checks.passed("the same access token is served", "equal; the provider accepts it")
    run.stop_web("restored")

    # A new key under the old key id (the ciphertexts name a key the ring has), and a ring
    # made anew by `generatekey` (they name a key it lacks).
    kid = run.env["BROKER_ENCRYPTION_KEYS"].split(":", 1)[0]
    for name, ring in (
        ("same key id", f"{kid}:{new_key()}"),
        ("another key id", f"drill2:{new_key()}"),
    ):
        run.start_web("wrong-key", BROKER_ENCRYPTION_KEYS=ring)
        refused = service.access_token(run)
        require(token not in refused.text, f"a broker with another key ({name}) served the token")
        require(
            refused.status_code >= 500 and "json" in refused.headers.get("Content-Type", ""),
            f"another key ({name}): {refused.status_code} {refused.text[:300]}",
        )
        run.stop_web("wrong-key")
        logged = run.log("wrong-key").read_text(errors="replace")
        # The next start's log tells only of that start.
        run.log("wrong-key").unlink()
        reason = re.findall(r"DecryptionError: (.+)", logged)
        require(reason, f"another key ({name}): the log does not say what could not be decrypted")
        checks.passed(
            f"another key ({name}): no token",
            f"{refused.status_code} {refused.json().get('error')}; logged: {reason[-1]}",
        )

    run.start_web("restored-again")
    again = service.access_token(run)
    require(
        again.status_code == 200 and again.json()["access_token"] == token,
        f"after the wrong key, with the right one: {again.status_code} {again.text[:300]}",
    )
    checks.passed("the wrong key harmed nothing", "the right keys serve the same token again")
    run.stop_web("restored-again")


def drill(run: DrillRun, checks: Checks) -> None:
    bindir = postgres_bindir()
    service, grants, token = the_broker_in_use(run, checks)
    assert run.sandbox is not None
    sandbox_secret = re.search(
        r'client_secret\s*=\s*"([^"]+)"', run.sandbox.providers_file.read_text()
    )
    require(sandbox_secret, "no client_secret in the sandbox's providers file")
    assert sandbox_secret is not None
    path = dump(
        run,
        bindir,
        {
            "the access token": token,
            "the provider app's client secret": sandbox_secret.group(1),
            "the service's secret": service.client_secret,
        },
        checks,
    )
    cluster = FreshCluster(run.workdir / "cluster", run.log("postgres"))
    try:
        cluster.create()
        restore(bindir, cluster, path, checks)
        the_restored_broker(run, cluster.url, service, grants, token, checks)
    finally:
        for name in list(run.processes):
            run.stop_web(name)
        cluster.remove()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--venv",
        type=existing_venv,
        default=Path(sys.prefix),
        help="the broker's virtualenv (default: the one running this script)",
    )
    options = parser.parse_args(argv)
    started = time.monotonic()
    smoke_production.bound(TIMEOUT_SECONDS)
    workdir = Path(tempfile.mkdtemp(prefix="broker-restore-drill-"))
    # The postgres user reaches its cluster's directory inside.
    workdir.chmod(0o711)
    run = DrillRun(workdir, options.venv)
    checks = Checks()
    try:
        drill(run, checks)
    except Exception as exc:  # anything: say what failed, show the logs
        signal.alarm(0)
        print(f"restore drill: FAILED: {exc}", file=sys.stderr)
        run.print_logs()
        print(f"restore drill: logs kept in {run.workdir}", file=sys.stderr)
        return 1
    finally:
        signal.alarm(0)
        run.stop()
        try:
            smoke_production.drop_database(DATABASE_URL)
        except (psycopg.Error, SmokeFailure) as exc:
            print(f"restore drill: the drill's database stays ({exc})", file=sys.stderr)
    shutil.rmtree(run.workdir, ignore_errors=True)
    checks.print()
    step(f"passed in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
