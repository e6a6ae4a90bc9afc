"""`make dev` (scripts/dev.py): ports checked first, a private Redis when none answers,
`.env` for manage.py, demo users created once, output prefixed per process."""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.core.management import call_command

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("dev_script", ROOT / "scripts" / "dev.py")
assert _spec is not None and _spec.loader is not None
dev = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dev)


@pytest.fixture
def listening_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """dev.py with free ports and a .env and data dir of its own."""
    monkeypatch.setattr(dev, "BROKER_PORT", dev.free_port())
    monkeypatch.setattr(dev, "SANDBOX_PORT", dev.free_port())
    monkeypatch.setattr(dev, "ENV_FILE", tmp_path / ".env")
    monkeypatch.setattr(dev, "DATA", tmp_path / "data")
    return tmp_path


def test_a_port_in_use_is_reported_before_anything_starts(
    isolated, listening_port, monkeypatch, capsys
):
    monkeypatch.setattr(dev, "SANDBOX_PORT", listening_port)
    started = time.monotonic()
    assert dev.main() == 1
    assert time.monotonic() - started < 2
    err = capsys.readouterr().err
    assert f"Port {listening_port} on 127.0.0.1 is already in use" in err
    assert "DEV_SANDBOX_PORT" in err
    assert not (isolated / ".env").exists() and not (isolated / "data").exists()


def test_ports_in_use_names_only_the_busy_ones(listening_port):
    free = dev.free_port()
    assert dev.ports_in_use([free, listening_port]) == [listening_port]


def test_without_redis_server_installed_it_prints_the_install_command(
    isolated, monkeypatch, capsys
):
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{dev.free_port()}/0")
    monkeypatch.setenv("PATH", str(isolated))  # no redis-server on it
    assert dev.main() == 1
    err = capsys.readouterr().err
    assert "redis-server is not installed" in err
    assert "apt-get install redis-server" in err


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_a_private_redis_keeps_its_data_in_the_data_dir_and_stops(tmp_path):
    server, url = dev.start_private_redis(tmp_path / "redis")
    try:
        assert url.startswith("redis://127.0.0.1:") and dev.redis_answers(url)
        import redis

        redis.Redis.from_url(url).set("kept", "1")
    finally:
        dev.stop([server])
    assert server.returncode is not None and not dev.redis_answers(url)
    assert (tmp_path / "redis" / "dump.rdb").exists()


def test_the_env_file_keeps_other_lines_and_manage_py_reads_it(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("EMAIL_URL=consolemail://\nREDIS_URL=redis://127.0.0.1:1/0\n")
    values = {"DEBUG": "1", "BROKER_PUBLIC_URL": "http://127.0.0.1:8000", "REDIS_URL": "redis://x"}
    dev.write_env_file(env_file, values)
    dev.write_env_file(env_file, {**values, "REDIS_URL": "redis://127.0.0.1:6379/0"})
    lines = env_file.read_text().splitlines()
    assert lines.count(dev.ENV_FILE_HEADER.splitlines()[0]) == 1
    assert [line for line in lines if not line.startswith("#")] == [
        "DEBUG=1",
        "BROKER_PUBLIC_URL=http://127.0.0.1:8000",
        "REDIS_URL=redis://127.0.0.1:6379/0",
        "EMAIL_URL=consolemail://",
    ]
    env = {
        k: v for k, v in os.environ.items() if k not in ("DEBUG", "SECRET_KEY", "BROKER_PUBLIC_URL")
    }
    result = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "shell",
            "-c",
            "from django.conf import settings as s; print(s.DEBUG, s.BROKER_PUBLIC_URL)",
        ],
        cwd=ROOT,
        env={
            **env,
            "DJANGO_SETTINGS_MODULE": "broker.settings",
            "BROKER_ENV_FILE": str(env_file),
            "BROKER_DATA_DIR": str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.splitlines()[-1] == "True http://127.0.0.1:8000", result.stderr


DEV_ENV_FILE = "DEBUG=1\nBROKER_PUBLIC_URL=http://127.0.0.1:8000\nBROKER_OIDC_NAME=Dev IdP\n"
SHOW_SETTINGS = "from django.conf import settings as s; print(s.DEBUG, s.BROKER_OIDC_NAME)"


def run_manage_py(checkout: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", SHOW_SETTINGS],
        cwd=checkout,
        env={**env, "DJANGO_SETTINGS_MODULE": "broker.settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_production_command_in_a_checkout_does_not_read_make_devs_env_file(tmp_path):
    """Issue 25 item 12: make dev's `.env` (DEBUG=1) sits in the checkout; a production
    command started there without BROKER_ENV_FILE runs with the real environment only."""
    checkout = tmp_path / "checkout"
    ignore = shutil.ignore_patterns("__pycache__")
    for package in ("broker", "accounts"):
        shutil.copytree(ROOT / package, checkout / package, ignore=ignore)
    shutil.copy(ROOT / "manage.py", checkout / "manage.py")
    (checkout / ".env").write_text(DEV_ENV_FILE)
    production = {
        **{k: v for k, v in os.environ.items() if k not in ("DEBUG", "BROKER_ENV_FILE")},
        "SECRET_KEY": "s" * 50,
        "BROKER_PUBLIC_URL": "https://broker.example.com",
        "BROKER_DATA_DIR": str(tmp_path / "data"),
    }
    result = run_manage_py(checkout, production)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "False single sign-on"


def test_make_devs_processes_read_its_env_file(isolated, monkeypatch):
    """...while make dev's own processes do, lines a developer added there included."""
    (isolated / ".env").write_text(DEV_ENV_FILE)
    monkeypatch.delenv("DEBUG")
    env = dev.child_env({"BROKER_DATA_DIR": str(isolated / "data")})
    assert env["BROKER_ENV_FILE"] == str(isolated / ".env")
    result = run_manage_py(ROOT, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "True Dev IdP"


def test_each_output_line_names_its_process(capsys):
    dev.relay("worker", io.StringIO("one\ntwo\n"))
    assert capsys.readouterr().out == "worker  | one\nworker  | two\n"


@pytest.mark.django_db
def test_demo_users_are_created_once_and_never_reset(settings, django_user_model):
    settings.DEBUG = True
    call_command("createdemousers", stdout=io.StringIO())
    alice = django_user_model.objects.get(username="alice")
    assert alice.check_password("alice-broker") and not alice.is_staff
    assert django_user_model.objects.get(username="admin").is_superuser
    alice.set_password("alice-changed-it")
    alice.save()

    out = io.StringIO()
    call_command("createdemousers", stdout=out)
    alice.refresh_from_db()
    assert alice.check_password("alice-changed-it")  # her sessions stay valid
    assert "user alice: exists, left as it is" in out.getvalue()


@pytest.mark.django_db
def test_make_dev_creates_no_local_user_to_take_the_sandbox_idps_usernames(
    settings, django_user_model
):
    settings.DEBUG = True
    call_command("createdemousers", "--user", "", stdout=io.StringIO())
    assert list(django_user_model.objects.values_list("username", flat=True)) == ["admin"]
