"""`make dev`: set up and run the whole system locally, with the sandbox as the provider.

Checks that the broker's and the sandbox's ports are free, uses the Redis answering at
REDIS_URL (or starts a private one), writes `.env`, which its processes read (and manage.py
in another shell with BROKER_ENV_FILE=.env), migrates both sites, registers the sandbox's
apps with the broker, makes the sandbox the broker's single sign-on IdP (BROKER_OIDC_*,
unless the environment names another issuer), creates the break-glass demo admin if it
does not exist yet, runs the broker (runserver), a Celery worker, Celery beat and the
sandbox, each output line prefixed with its process's name. Ctrl-C stops them all.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO

import redis

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
ENV_FILE = ROOT / ".env"
BROKER_PORT = int(os.environ.get("DEV_BROKER_PORT", "8000"))
SANDBOX_PORT = int(os.environ.get("DEV_SANDBOX_PORT", "8001"))
BROKER_URL = f"http://127.0.0.1:{BROKER_PORT}"
# Another host name than the broker's, so the two sites never share cookies.
SANDBOX_URL = f"http://localhost:{SANDBOX_PORT}"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
INSTALL_REDIS = "sudo apt-get install redis-server"
DEMO_ADMIN = ("admin", "admin-broker")
ENV_FILE_HEADER = (
    "# Written by `make dev` (git-ignored): the settings its processes run with; read only\n"
    "# where named, e.g. `BROKER_ENV_FILE=.env .venv/bin/python manage.py ...`. make dev\n"
    "# rewrites DEBUG, BROKER_PUBLIC_URL, REDIS_URL and the sandbox's BROKER_OIDC_* at each\n"
    "# start and keeps other lines; the real environment wins over every line.\n"
)

_output_lock = threading.Lock()


class SetupFailed(Exception):
    pass


def ports_in_use(ports: Iterable[int]) -> list[int]:
    """The ports something already listens on at 127.0.0.1 (a port in TIME_WAIT is free:
    runserver binds with SO_REUSEADDR too)."""
    busy = []
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                busy.append(port)
    return busy


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).ping())
    except (redis.RedisError, OSError, ValueError):
        return False


def start_private_redis(data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    """A Redis of our own on a free loopback port, its data under `data_dir`. Raises
    SetupFailed when it does not answer within 10 s."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = subprocess.Popen(
        [
            "redis-server",
            *("--bind", "127.0.0.1", "--port", str(port), "--dir", str(data_dir)),
            *("--loglevel", "warning"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not redis_answers(url):
        if process.poll() is not None or time.monotonic() > deadline:
            stop([process])
            output = process.stdout.read() if process.stdout else ""
            raise SetupFailed(f"the private redis-server did not start:\n{output}")
        time.sleep(0.1)
    return process, url


def write_env_file(path: Path, values: dict[str, str]) -> None:
    """Sets `values` in the .env file (created if missing), keeping every other line but
    the header (the comment lines it starts with, as an earlier make dev wrote them)."""
    old = path.read_text().splitlines(keepends=True) if path.exists() else []
    while old and old[0].startswith("#"):
        old.pop(0)
    kept = [line for line in old if line.split("=", 1)[0].strip() not in values]
    path.write_text(
        ENV_FILE_HEADER
        + "".join(f"{name}={value}\n" for name, value in values.items())
        + "".join(kept)
    )


def env_file_values(path: Path) -> dict[str, str]:
    """NAME=value lines (as sandbox_setup --sso-env writes them)."""
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def child_env(settings: dict[str, str]) -> dict[str, str]:
    """The environment of make dev's processes: they read `.env` (the settings read it only
    where BROKER_ENV_FILE names it), so lines a developer added there apply to them too."""
    return {
        **os.environ,
        **settings,
        "BROKER_ENV_FILE": str(ENV_FILE),
        "SANDBOX_PUBLIC_URL": SANDBOX_URL,
        "PYTHONUNBUFFERED": "1",
    }


def relay(name: str, stream: IO[str]) -> None:
    """Copies a child's output to ours, each line prefixed with the child's name."""
    for line in stream:
        with _output_lock:
            sys.stdout.write(f"{name:<7} | {line}")
            sys.stdout.flush()


def start(name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    assert process.stdout is not None
    threading.Thread(target=relay, args=(name, process.stdout), daemon=True).start()
    return process


def run(*args: str, env: dict[str, str]) -> None:
    """One set-up step (a manage.py command), its output prefixed "setup"."""
    step = start("setup", [sys.executable, *args], env)
    if step.wait() != 0:
        raise SetupFailed(f"set-up step failed: {' '.join(args)}")


def stop(processes: Iterable[subprocess.Popen[str]]) -> None:
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    # `kill` or a supervisor's stop ends the children too, as Ctrl-C does.
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    busy = ports_in_use([BROKER_PORT, SANDBOX_PORT])
    if busy:
        ports = " and ".join(map(str, busy))
        print(
            f"{'Ports' if len(busy) > 1 else 'Port'} {ports} on 127.0.0.1 "
            f"{'are' if len(busy) > 1 else 'is'} already in use (another `make dev`?). "
            f"Find the process with: ss -ltnp 'sport = :{busy[0]}'\n"
            "Stop it, or choose other ports: DEV_BROKER_PORT=8010 DEV_SANDBOX_PORT=8011 make dev",
            file=sys.stderr,
        )
        return 1
    DATA.mkdir(exist_ok=True)
    services: list[subprocess.Popen[str]] = []
    children: dict[str, subprocess.Popen[str]] = {}
    try:
        redis_url = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
        if not redis_answers(redis_url):
            if shutil.which("redis-server") is None:
                print(
                    f"Redis is not answering at {redis_url} and redis-server is not "
                    f"installed. Install it with:\n  {INSTALL_REDIS}",
                    file=sys.stderr,
                )
                return 1
            redis_server, redis_url = start_private_redis(DATA / "redis")
            services.append(redis_server)
            print(f"No Redis was answering: started a private one at {redis_url} (data/redis)")
            threading.Thread(target=relay, args=("redis", redis_server.stdout), daemon=True).start()
        settings = {
            "DEBUG": os.environ.get("DEBUG", "1"),
            "BROKER_PUBLIC_URL": BROKER_URL,
            "REDIS_URL": redis_url,
        }
        write_env_file(ENV_FILE, settings)
        env = child_env(settings)
        providers_file = DATA / "providers.dev.toml"
        sso_env_file = DATA / "sso.dev.env"
        run("manage.py", "migrate", "--no-input", "-v", "0", env=env)
        run("sandbox/manage.py", "migrate", "--no-input", "-v", "0", env=env)
        run(
            "sandbox/manage.py",
            "sandbox_setup",
            "--broker-url",
            BROKER_URL,
            "--out",
            str(providers_file),
            "--sso-env",
            str(sso_env_file),
            env=env,
        )
        run("manage.py", "loadproviders", str(providers_file), env=env)
        if "BROKER_OIDC_ISSUER" not in os.environ:
            settings.update(env_file_values(sso_env_file))
            write_env_file(ENV_FILE, settings)
            env.update(settings)
        # The demo people sign in with the sandbox IdP; only the break-glass admin has a
        # password here (a local "alice" would take the IdP alice's username).
        run("manage.py", "createdemousers", "--admin", ":".join(DEMO_ADMIN), "--user", "", env=env)
        python = sys.executable
        celery = [python, "-m", "celery", "-A", "broker"]
        commands = {
            "web": [python, "manage.py", "runserver", f"127.0.0.1:{BROKER_PORT}"],
            "worker": [*celery, "worker", "-l", "info", "-c", "2"],
            "beat": [*celery, "beat", "-l", "info", "-s", str(DATA / "celerybeat-schedule")],
            "sandbox": [
                python,
                "sandbox/manage.py",
                "runserver",
                f"127.0.0.1:{SANDBOX_PORT}",
                "--noreload",
            ],
        }
        children = {name: start(name, command, env) for name, command in commands.items()}
        print(
            f"\nBroker:  {BROKER_URL}/  (single sign-on at the sandbox: alice / alice-sandbox, "
            f"or carol / carol-sandbox, an admin; break-glass admin {DEMO_ADMIN[0]} / "
            f"{DEMO_ADMIN[1]} at {BROKER_URL}/admin/)\n"
            f"Sandbox: {SANDBOX_URL}/  (provider and IdP sign-in: alice / alice-sandbox)\n"
            "Ctrl-C stops everything.\n",
            flush=True,
        )
        while all(child.poll() is None for child in [*children.values(), *services]):
            time.sleep(0.5)
        dead = [name for name, child in children.items() if child.poll() is not None]
        print(f"{', '.join(dead) or 'redis'} stopped; stopping the rest.", file=sys.stderr)
        return 1
    except SetupFailed as exc:
        print(exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop(children.values())
        stop(services)  # last: the worker and beat use Redis until they have stopped


if __name__ == "__main__":
    sys.exit(main())
