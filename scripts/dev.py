"""`make dev`: set up and run the whole system locally, with the sandbox as the provider.

Migrates both sites, registers the sandbox's apps with the broker, creates a demo admin
and a demo user, then runs the broker (runserver), a Celery worker, Celery beat and the
sandbox. Ctrl-C stops them all.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
BROKER_URL = "http://127.0.0.1:8000"
# Another host name than the broker's, so the two sites never share cookies.
SANDBOX_URL = "http://localhost:8001"
DEMO_ADMIN = ("admin", "admin-broker")
DEMO_USER = ("alice", "alice-broker")


def redis_answers(host: str = "127.0.0.1", port: int = 6379) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def run(*args: str, env: dict[str, str]) -> None:
    subprocess.run([sys.executable, *args], cwd=ROOT, env=env, check=True)


def stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    # `kill` or a supervisor's stop ends the children too, as Ctrl-C does.
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    DATA.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "DEBUG": os.environ.get("DEBUG", "1"),
        "BROKER_PUBLIC_URL": BROKER_URL,
        "SANDBOX_PUBLIC_URL": SANDBOX_URL,
        "PYTHONUNBUFFERED": "1",
    }
    if not redis_answers():
        print(
            "Redis is not answering on 127.0.0.1:6379. Start it with:\n"
            '  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no'
        )
        return 1
    providers_file = DATA / "providers.dev.toml"
    run("manage.py", "migrate", "--no-input", "-v", "0", env=env)
    run("sandbox/manage.py", "migrate", "--no-input", "-v", "0", env=env)
    run(
        "sandbox/manage.py",
        "sandbox_setup",
        "--broker-url",
        BROKER_URL,
        "--out",
        str(providers_file),
        env=env,
    )
    run("manage.py", "loadproviders", str(providers_file), env=env)
    run(
        "manage.py",
        "createdemousers",
        "--admin",
        ":".join(DEMO_ADMIN),
        "--user",
        ":".join(DEMO_USER),
        env=env,
    )

    processes = {
        "web": [sys.executable, "manage.py", "runserver", "127.0.0.1:8000"],
        "worker": [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "broker",
            "worker",
            "-l",
            "info",
            "-c",
            "2",
        ],
        "beat": [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "broker",
            "beat",
            "-l",
            "info",
            "-s",
            str(DATA / "celerybeat-schedule"),
        ],
        "sandbox": [
            sys.executable,
            "sandbox/manage.py",
            "runserver",
            "127.0.0.1:8001",
            "--noreload",
        ],
    }
    children = {name: subprocess.Popen(cmd, cwd=ROOT, env=env) for name, cmd in processes.items()}
    print(
        f"\nBroker:  {BROKER_URL}/  (user {DEMO_USER[0]} / {DEMO_USER[1]}; "
        f"admin {DEMO_ADMIN[0]} / {DEMO_ADMIN[1]} at {BROKER_URL}/admin/)\n"
        f"Sandbox: {SANDBOX_URL}/  (provider sign-in: alice / alice-sandbox)\n"
        "Ctrl-C stops everything.\n"
    )
    try:
        while all(child.poll() is None for child in children.values()):
            time.sleep(0.5)
        dead = [name for name, child in children.items() if child.poll() is not None]
        print(f"{', '.join(dead)} stopped; stopping the rest.")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children.values():
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()


if __name__ == "__main__":
    sys.exit(main())
