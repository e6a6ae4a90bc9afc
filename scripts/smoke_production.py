"""Production smoke run (called by .ci/run): the broker installed as a production image is
built, started as the README says, and used once end to end.

- a virtualenv made from requirements.txt alone (no dev extras; `--require-hashes`), or the
  one given with `--venv PATH` (or SMOKE_VENV), used as it is (e.g. a release's, already
  installed);
- DEBUG=0 (BROKER_ALLOW_HTTP=1: loopback only), PostgreSQL on a database of its own
  (SMOKE_DATABASE_URL, dropped and created), Redis db SMOKE_REDIS_URL (flushed);
- migrate, check --deploy, collectstatic; gunicorn with gunicorn.conf.py, a Celery worker
  and Celery beat, all from that virtualenv; nginx with deploy/nginx.conf in front of
  gunicorn (on loopback ports, tests/front_server.py): every request below goes through it;
- the sandbox provider (development-only: it runs from the dev virtualenv this script runs
  in) issuing 30-second access tokens;
- a user signs in, presses Connect, signs in at the sandbox and approves, over HTTP;
- a service client and an access rule made with manage.py; the service fetches a broker
  token and then the user's provider token, which the provider accepts;
- the worker refreshes the grant in the background, and the service then gets the new token;
- `manage.py revokegrants` hands the user's grants to the worker, which revokes them;
- the page's CSS is served with a hashed name and a long cache.

Every process it started is stopped (by pid) however it ends; the whole run is bounded by
SMOKE_TIMEOUT seconds. Any failure exits non-zero with the logs' last lines.
scripts/smoke_image.py runs the same inside the OCI image (Run's install, command and
process commands are what it changes).

    .venv/bin/python scripts/smoke_production.py [--venv PATH]
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import front_server, processes  # noqa: E402
from tests.consent_driver import answer_consent, press_connect, sign_in_to_sandbox  # noqa: E402
from tests.sandbox_server import (  # noqa: E402
    SandboxServer,
    free_port,
    launch_sandbox,
    wait_until_up,
)

DATABASE_URL = os.environ.get(
    "SMOKE_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/broker_smoke"
)
REDIS_URL = os.environ.get("SMOKE_REDIS_URL", "redis://127.0.0.1:6379/14")
TIMEOUT_SECONDS = int(os.environ.get("SMOKE_TIMEOUT", "300"))
ACCESS_TOKEN_SECONDS = 30
USER, PASSWORD = "alice", "alice-broker-smoke"
HTTP_TIMEOUT = 15


class SmokeFailure(Exception):
    pass


def require(condition: object, message: str) -> None:
    if not condition:
        raise SmokeFailure(message)


def step(message: str) -> None:
    print(f"smoke: {message}", flush=True)


# The smoke run's waits: a server not answering yet is "not yet", not a failure.
wait_until = functools.partial(
    processes.wait_until, ignoring=(requests.RequestException,), interval=0.5
)


class Run:
    """The temporary directory, the processes started and their logs."""

    def __init__(self, workdir: Path, venv: Path | None = None) -> None:
        self.workdir = workdir
        # None: a fresh one, built from requirements.txt alone.
        self.given_venv = venv
        self.venv = venv or workdir / "venv"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.sandbox: SandboxServer | None = None
        # The public URL is nginx's; gunicorn listens behind it.
        self.port = free_port()
        self.web_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        encryption_key = base64.b64encode(secrets.token_bytes(32)).decode()
        self.env = {
            "PATH": f"{self.venv / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": os.environ.get("HOME", str(workdir)),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "DJANGO_SETTINGS_MODULE": "broker.settings",
            # Only what is set here: not a developer's .env (make dev's DEBUG=1).
            "BROKER_ENV_FILE": "",
            "DEBUG": "0",
            "BROKER_ALLOW_HTTP": "1",
            "SECRET_KEY": secrets.token_urlsafe(50),
            "BROKER_ENCRYPTION_KEYS": f"smoke1:{encryption_key}",
            "BROKER_PUBLIC_URL": self.url,
            "ALLOWED_HOSTS": "127.0.0.1",
            # nginx, the one proxy in front.
            "BROKER_TRUSTED_PROXIES": "1",
            "DATABASE_URL": DATABASE_URL,
            "REDIS_URL": REDIS_URL,
            "BROKER_DATA_DIR": str(workdir / "data"),
            # Claim due grants every 2 s, so the background refresh comes quickly.
            "BROKER_REFRESH_BEAT_SECONDS": "2",
        }

    def log(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    # What differs in the image smoke run (scripts/smoke_image.py): how the broker is
    # installed, how a command is run, and the commands of its processes.
    def install(self) -> None:
        if self.given_venv is not None:
            step(f"the virtualenv at {self.given_venv}, as it is")
            return
        step("virtualenv from requirements.txt only, every package checked against its hash")
        subprocess.run(["python3", "-m", "venv", str(self.venv)], check=True, timeout=120)
        pip = str(self.venv / "bin" / "pip")
        subprocess.run(
            [pip, "install", "--quiet", "--require-hashes", "-r", str(ROOT / "requirements.txt")],
            check=True,
            timeout=600,
        )

    def command(self, *args: str) -> list[str]:
        """The command line of `args` (a program of the production virtualenv)."""
        return [str(self.venv / "bin" / args[0]), *args[1:]]

    def migrate_command(self) -> tuple[str, ...]:
        return ("python", "manage.py", "migrate", "--no-input", "-v", "0")

    def collectstatic_command(self) -> tuple[str, ...] | None:
        return ("python", "manage.py", "collectstatic", "--no-input", "-v", "0")

    def web_command(self) -> tuple[str, ...]:
        return ("gunicorn", "--bind", f"127.0.0.1:{self.web_port}")

    def worker_command(self) -> tuple[str, ...]:
        return ("celery", "-A", "broker", "worker", "--loglevel", "INFO", "-c", "2")

    def beat_command(self) -> tuple[str, ...]:
        schedule = str(self.workdir / "celerybeat-schedule")
        return ("celery", "-A", "broker", "beat", "--loglevel", "INFO", "--schedule", schedule)

    def readable_path(self, path: Path) -> str:
        """`path` (a file this script wrote) as the broker's commands can read it."""
        return str(path)

    def run(self, *args: str, env: dict[str, str] | None = None) -> str:
        """A command of the installed broker; its output, or SmokeFailure."""
        result = subprocess.run(
            self.command(*args),
            cwd=ROOT,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=180,
        )
        if result.returncode != 0:
            raise SmokeFailure(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    def start(self, name: str, *args: str) -> None:
        self.processes[name] = processes.start(self.command(*args), self.log(name), env=self.env)
        step(f"started {name} (pid {self.processes[name].pid})")

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            require(process.poll() is None, f"{name} exited with {process.returncode}")

    def stop(self) -> None:
        """Every process started here, by pid: SIGTERM, then SIGKILL after 15 s."""
        if self.sandbox is not None:
            self.sandbox.stop()
        for process in self.processes.values():
            processes.stop(process, timeout=15)

    def print_logs(self) -> None:
        logs = [*sorted(self.workdir.glob("*.log")), *sorted(self.workdir.glob("nginx/*.log"))]
        if self.sandbox is not None:
            logs.append(self.sandbox.log_file)
        for path in logs:
            lines = path.read_text(errors="replace").splitlines()[-30:]
            print(f"----- {path} (last {len(lines)} lines)", file=sys.stderr)
            print("\n".join(lines), file=sys.stderr)


def drop_database(url: str = DATABASE_URL, *, create: bool = False) -> None:
    """Drops a run's own database (the smoke run's, or `url`), and creates it anew with
    `create`."""
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    require(re.fullmatch(r"[A-Za-z0-9_]+", name), f"unexpected database name {name!r}")
    maintenance = parts._replace(path="/postgres").geturl()
    with psycopg.connect(maintenance, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if create:
            conn.execute(f'CREATE DATABASE "{name}"')


def fresh_database(url: str = DATABASE_URL) -> None:
    """Drops and creates a run's own database (the smoke run's, or `url`)."""
    drop_database(url, create=True)


def flush_redis(url: str = REDIS_URL) -> None:
    import redis

    redis.Redis.from_url(url, socket_timeout=5).flushdb()


def release(run: Run) -> None:
    """The README's release steps."""
    step("migrate, check --deploy, collectstatic")
    run.run(*run.migrate_command())
    run.run("python", "manage.py", "check", "--deploy", "--fail-level", "ERROR")
    collectstatic = run.collectstatic_command()
    if collectstatic is not None:
        run.run(*collectstatic)
    run.run(
        "python",
        "manage.py",
        "createsuperuser",
        "--no-input",
        "--username",
        USER,
        "--email",
        f"{USER}@example.com",
        env={"DJANGO_SUPERUSER_PASSWORD": PASSWORD},
    )


def start_processes(run: Run) -> None:
    run.start("web", *run.web_command())
    run.processes["nginx"] = front_server.start(
        run.port, f"127.0.0.1:{run.web_port}", run.workdir / "nginx"
    )
    step(f"started nginx (pid {run.processes['nginx'].pid}) in front of gunicorn")
    run.start("worker", *run.worker_command())
    run.start("beat", *run.beat_command())
    wait_until(
        lambda: processes.answers(f"{run.url}/readyz"),
        60,
        "gunicorn /readyz through nginx",
        process=run.processes["web"],
        log_file=run.log("web"),
    )
    wait_until(
        lambda: b" ready." in run.log("worker").read_bytes(),
        60,
        "the Celery worker",
        process=run.processes["worker"],
        log_file=run.log("worker"),
    )
    run.check_alive()


def check_static_files(session: requests.Session, run: Run) -> None:
    """The admin's and the broker's own pages link hashed, long-cached stylesheets."""
    stylesheets = []
    for path in ("/admin/login/", "/accounts/login/"):
        page = session.get(f"{run.url}{path}", timeout=HTTP_TIMEOUT)
        require(page.status_code == 200, f"{path} answered {page.status_code}")
        linked = re.findall(r'href="(/static/[^"]+\.css)"', page.text)
        require(linked, f"{path} links no stylesheet")
        stylesheets += linked
    for href in stylesheets:
        require(re.search(r"\.[0-9a-f]{12}\.css$", href), f"{href} has no hashed name")
        css = session.get(f"{run.url}{href}", headers={"Accept-Encoding": "gzip"}, timeout=5)
        require(css.status_code == 200, f"{href} answered {css.status_code}")
        cache = css.headers.get("Cache-Control", "")
        require("immutable" in cache and "max-age=315360000" in cache, f"{href}: {cache!r}")
    step(f"static files served: {', '.join(stylesheets)}")


def consent(run: Run, sandbox: SandboxServer) -> requests.Session:
    """Sign in to the broker, Connect, sign in at the sandbox, Allow, back to the callback."""
    browser = requests.Session()
    check_static_files(browser, run)
    response = browser.post(
        f"{run.url}/accounts/login/",
        data={
            "username": USER,
            "password": PASSWORD,
            "csrfmiddlewaretoken": browser.cookies["csrftoken"],
        },
        allow_redirects=False,
        timeout=HTTP_TIMEOUT,
    )
    require(response.status_code == 302, f"broker sign-in answered {response.status_code}")
    authorize_url = press_connect(browser, run.url, "sandbox")
    require(authorize_url.startswith(sandbox.url), f"Connect sent the browser to {authorize_url}")
    sign_in_to_sandbox(browser, sandbox.url, "alice")
    callback = answer_consent(browser, authorize_url)
    require(callback.startswith(f"{run.url}/oauth/callback/sandbox?"), f"callback {callback}")
    landed = browser.get(callback, timeout=HTTP_TIMEOUT)
    require(landed.status_code == 200, f"the callback ended on {landed.status_code}")
    connections = browser.get(f"{run.url}/connections/", timeout=HTTP_TIMEOUT)
    require('data-status="active"' in connections.text, "no active connection on My connections")
    step("consent done: the grant is active")
    return browser


def service_token(run: Run) -> str:
    created = json.loads(run.run("python", "manage.py", "createserviceclient", "Smoke", "--json"))
    client_id, client_secret = created["client_id"], created["client_secret"]
    run.run("python", "manage.py", "addaccessrule", client_id, "--provider", "sandbox")
    response = requests.post(
        f"{run.url}/api/v1/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(client_id, client_secret),
        timeout=HTTP_TIMEOUT,
    )
    require(response.status_code == 200, f"oauth/token: {response.status_code} {response.text}")
    return str(response.json()["access_token"])


def ask_for_token(run: Run, broker_token: str) -> requests.Response:
    return requests.post(
        f"{run.url}/api/v1/access-token",
        json={"user": USER, "provider": "sandbox", "min_ttl": 5},
        headers={"Authorization": f"Bearer {broker_token}"},
        timeout=HTTP_TIMEOUT,
    )


def provider_token(run: Run, broker_token: str) -> str:
    response = ask_for_token(run, broker_token)
    require(response.status_code == 200, f"access-token: {response.status_code} {response.text}")
    return str(response.json()["access_token"])


def provider_accepts(sandbox: SandboxServer, token: str) -> bool:
    me = requests.get(
        f"{sandbox.url}/me", headers={"Authorization": f"Bearer {token}"}, timeout=HTTP_TIMEOUT
    )
    return me.status_code == 200


def smoke(run: Run) -> None:
    run.install()
    fresh_database()
    flush_redis()
    release(run)
    start_processes(run)
    run.sandbox = launch_sandbox(run.workdir / "sandbox", run.url, ACCESS_TOKEN_SECONDS)
    wait_until_up(run.sandbox)
    run.run("python", "manage.py", "loadproviders", run.readable_path(run.sandbox.providers_file))
    step(f"sandbox at {run.sandbox.url}, registered")

    consent(run, run.sandbox)
    broker_token = service_token(run)
    first = provider_token(run, broker_token)
    require(provider_accepts(run.sandbox, first), "the sandbox refused the token the broker served")
    step("the service got the user's token, and the provider accepts it")

    refreshes = run.sandbox.counters()["token"]["refresh_token"]
    wait_until(
        lambda: (
            run.sandbox is not None and run.sandbox.counters()["token"]["refresh_token"] > refreshes
        ),
        ACCESS_TOKEN_SECONDS + 30,
        "the worker's background refresh",
    )
    # The provider counts the refresh before the worker commits it: poll the broker briefly.
    wait_until(
        lambda: provider_token(run, broker_token) != first,
        10,
        "the broker to serve the token of the background refresh",
    )
    second = provider_token(run, broker_token)
    require(provider_accepts(run.sandbox, second), "the sandbox refused the refreshed token")
    step("the worker refreshed the grant in the background; the new token is served")

    run.run("python", "manage.py", "revokegrants", "--user", USER, "--reason", "smoke run")
    wait_until(
        lambda: ask_for_token(run, broker_token).status_code == 404,
        30,
        "the worker's revocation (access-token answering 404)",
    )
    run.check_alive()
    step("revokegrants: the worker revoked the grant; no token is served for it")


# What the run starts from the virtualenv (and python for manage.py).
VENV_COMMANDS = ("python", "gunicorn", "celery")


def existing_venv(value: str) -> Path:
    """--venv's argument: a virtualenv with the broker's commands installed."""
    venv = Path(value).resolve()
    missing = [name for name in VENV_COMMANDS if not os.access(venv / "bin" / name, os.X_OK)]
    if missing:
        commands = ", ".join(f"bin/{name}" for name in missing)
        raise argparse.ArgumentTypeError(
            f"{venv} is not a virtualenv with the broker installed (no {commands}:"
            " pip install -r requirements.txt in it)"
        )
    return venv


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--venv",
        type=existing_venv,
        default=os.environ.get("SMOKE_VENV") or None,
        help="reuse this virtualenv as it is (default: SMOKE_VENV, else a fresh one built from"
        " requirements.txt alone)",
    )
    return parser.parse_args(argv)


def bound(timeout_seconds: int) -> None:
    """After `timeout_seconds`, or on SIGTERM or SIGINT, SmokeFailure is raised wherever the
    run is, so that its `finally` stops what it started (`signal.alarm(0)` ends the bound)."""

    def give_up(signum: int, frame: object) -> None:
        raise SmokeFailure(f"stopped by signal {signum} (bound: {timeout_seconds}s)")

    for signum in (signal.SIGALRM, signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, give_up)
    signal.alarm(timeout_seconds)


def main(
    make_run: Callable[[Path, Path | None], Run] = Run,
    timeout_seconds: int = TIMEOUT_SECONDS,
    argv: list[str] | None = None,
) -> int:
    options = parse_args(argv)
    started = time.monotonic()
    bound(timeout_seconds)
    run = make_run(Path(tempfile.mkdtemp(prefix="broker-smoke-")), options.venv)
    try:
        smoke(run)
    except Exception as exc:  # anything: say what failed, show the logs
        signal.alarm(0)
        print(f"smoke: FAILED: {exc}", file=sys.stderr)
        run.print_logs()
        print(f"smoke: logs kept in {run.workdir}", file=sys.stderr)
        return 1
    finally:
        signal.alarm(0)
        run.stop()
    shutil.rmtree(run.workdir, ignore_errors=True)
    step(f"passed in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
