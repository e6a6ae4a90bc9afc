"""Start-up: with DEBUG off, a missing or malformed secret stops the process with one clear line."""

import base64
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from broker.crypto.key_ring import KeyRing

ROOT = Path(__file__).resolve().parent.parent
GOOD_KEY = "k1:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
# The test run's own settings travel in the environment; a start-up test begins without them.
OURS = (
    "SECRET_KEY",
    "BROKER_ENCRYPTION_KEYS",
    "BROKER_ALLOW_HTTP",
    "BROKER_PUBLIC_URL",
    "DEBUG",
    "ALLOWED_HOSTS",
)


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in OURS}


def start(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env={**clean_env(), "DJANGO_SETTINGS_MODULE": "broker.settings", "DEBUG": "0", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BROKER_ENCRYPTION_KEYS": GOOD_KEY}, "SECRET_KEY is not set"),
        ({"SECRET_KEY": "x" * 60}, "BROKER_ENCRYPTION_KEYS is not set"),
        (
            {"SECRET_KEY": "x" * 60, "BROKER_ENCRYPTION_KEYS": "k1:short"},
            "BROKER_ENCRYPTION_KEYS: key 'k1'",
        ),
        (
            {"SECRET_KEY_FILE": "/nonexistent/secret", "BROKER_ENCRYPTION_KEYS": GOOD_KEY},
            "SECRET_KEY_FILE: cannot read",
        ),
        (
            {"SECRET_KEY": "x" * 60, "BROKER_ENCRYPTION_KEYS": GOOD_KEY},
            "BROKER_PUBLIC_URL is not set",
        ),
        (
            {
                "SECRET_KEY": "x" * 60,
                "BROKER_ENCRYPTION_KEYS": GOOD_KEY,
                "BROKER_PUBLIC_URL": "http://broker.example.com",
            },
            "BROKER_PUBLIC_URL must start with https://",
        ),
    ],
)
def test_a_missing_or_malformed_secret_stops_start_up(env, message):
    result = start(**env)
    assert result.returncode != 0
    assert message in result.stderr
    assert "ImproperlyConfigured" in result.stderr


def test_production_settings_pass_the_deploy_check(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text("s" * 30 + "Q9!x" * 10)
    result = start(
        SECRET_KEY_FILE=str(secret_file),
        BROKER_ENCRYPTION_KEYS=GOOD_KEY,
        ALLOWED_HOSTS="broker.example.com",
        BROKER_PUBLIC_URL="https://broker.example.com",
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_development_defaults_need_no_secrets(tmp_path):
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={
            **clean_env(),
            "DJANGO_SETTINGS_MODULE": "broker.settings",
            "DEBUG": "1",
            "BROKER_DATA_DIR": str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "dev-encryption.key").exists()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    ("command", "exit_code"),
    [
        ([sys.executable, "manage.py", "migrate"], 2),
        ([sys.executable, "manage.py", "runserver", "--noreload", "127.0.0.1:0"], 2),
        ([str(BIN / "celery"), "-A", "broker", "worker"], 2),
        ([str(BIN / "celery"), "-A", "broker", "beat"], 2),
        # gunicorn's own "app failed to load" code: its master stops, it does not respawn.
        # One worker: each worker process of gunicorn.conf.py loads the app and says it once.
        ([str(BIN / "gunicorn"), "broker.wsgi", "-b", "127.0.0.1:{port}", "-w", "1"], 4),
    ],
    ids=["manage.py", "runserver", "worker", "beat", "gunicorn"],
)
def test_a_missing_setting_is_one_line_at_every_start(command, exit_code):
    result = subprocess.run(
        [part.format(port=free_port()) for part in command],
        cwd=ROOT,
        env={**clean_env(), "DJANGO_SETTINGS_MODULE": "broker.settings", "DEBUG": "0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == exit_code, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    named = [line for line in result.stderr.splitlines() if "SECRET_KEY" in line]
    assert named == ["ImproperlyConfigured: SECRET_KEY is not set (required when DEBUG is off)"]
    if command[0] == sys.executable:
        assert result.stderr.strip() == named[0]


def test_settings_read_the_env_file_and_the_environment_wins(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("# written by make dev\nDEBUG=1\nBROKER_DATA_DIR=" + str(tmp_path) + "\n")
    base = {**clean_env(), "DJANGO_SETTINGS_MODULE": "broker.settings"}

    def check(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", "check"],
            cwd=ROOT,
            env={**base, "BROKER_ENV_FILE": str(env_file), **env},
            capture_output=True,
            text=True,
            timeout=60,
        )

    developing = check()
    assert developing.returncode == 0, developing.stderr  # DEBUG=1 came from the file
    assert (tmp_path / "dev-encryption.key").exists()
    production = check(DEBUG="0")
    assert production.returncode == 2
    assert production.stderr.strip().endswith("SECRET_KEY is not set (required when DEBUG is off)")


@pytest.mark.parametrize("env_file", [None, ""], ids=["BROKER_ENV_FILE unset", "empty"])
def test_generatekey_makes_a_key_with_no_secret_set(env_file):
    """Issue 25 item 11: with DEBUG off the settings need BROKER_ENCRYPTION_KEYS and
    SECRET_KEY; the command that makes the key must run before either exists."""
    env = {
        **{k: v for k, v in clean_env().items() if k != "BROKER_ENV_FILE"},
        "DJANGO_SETTINGS_MODULE": "broker.settings",
        "DEBUG": "0",
        **({} if env_file is None else {"BROKER_ENV_FILE": env_file}),
    }

    def generatekey(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", "generatekey", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (result.returncode, result.stderr) == (0, "")
        return result.stdout.strip()

    kid, _, key = generatekey().partition(":")
    assert kid.startswith("k") and len(base64.b64decode(key, validate=True)) == 32
    answer = json.loads(generatekey("--kid", "k2027", "--json"))
    assert answer["kid"] == "k2027" and answer["entry"] == f"k2027:{answer['key']}"
    assert len(base64.b64decode(answer["key"], validate=True)) == 32
    assert answer["key"] != key
    KeyRing.parse(f"{answer['entry']},{kid}:{key}")  # both are valid in the setting


def test_a_web_worker_imports_the_url_configuration_before_its_first_request():
    """gunicorn loads `broker.wsgi` before a worker accepts: the views and schemas the first
    requests need are imported by then, not by those requests, which would all wait."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, broker.wsgi; print('broker.api.serving' in sys.modules)",
        ],
        cwd=ROOT,
        env={**clean_env(), "DJANGO_SETTINGS_MODULE": "tests.settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip() == "True", result.stderr


def test_urls_with_passwords_are_read_from_their_files(tmp_path):
    """DATABASE_URL, REDIS_URL, CELERY_BROKER_URL and EMAIL_URL carry passwords: a
    deployment mounts them as secrets (deploy/kubernetes) and names the files."""
    files = {
        "DATABASE_URL": "postgres://broker:db-pw@db.internal:5432/broker",
        "REDIS_URL": "redis://:redis-pw@redis.internal:6379/3",
        "CELERY_BROKER_URL": "redis://:celery-pw@redis.internal:6379/4",
        "EMAIL_URL": "smtp+tls://mailer:mail-pw@mail.internal:587",
    }
    for name, url in files.items():
        (tmp_path / name).write_text(url + "\n")
    show = (
        "import json, django; django.setup(); from django.conf import settings as s; "
        "db = s.DATABASES['default']; "
        "print(json.dumps([db['HOST'], db['PASSWORD'], s.REDIS_URL, s.CACHES['default']"
        "['LOCATION'], s.CELERY_BROKER_URL, s.EMAIL_HOST, s.EMAIL_HOST_PASSWORD]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", show],
        cwd=ROOT,
        env={
            **{k: v for k, v in clean_env().items() if k not in files},
            "DJANGO_SETTINGS_MODULE": "broker.settings",
            "DEBUG": "0",
            "SECRET_KEY": "x" * 60,
            "BROKER_ENCRYPTION_KEYS": GOOD_KEY,
            "BROKER_PUBLIC_URL": "https://broker.example.com",
            **{f"{name}_FILE": str(tmp_path / name) for name in files},
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        "db.internal",
        "db-pw",
        files["REDIS_URL"],
        files["REDIS_URL"],
        files["CELERY_BROKER_URL"],
        "mail.internal",
        "mail-pw",
    ]


def test_every_setting_has_its_default_in_settings_py_only():
    """A setting's default is written once, in broker/settings.py: code that reads it with
    a fallback of its own (`getattr(settings, "X", default)`) keeps a second default, which
    drifts from the first (BROKER_API_RATE_LIMIT: 6000 there, 0 in the rate limiter)."""
    import ast

    from django.conf import settings

    fallbacks = []
    for package in ("broker", "accounts"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name)
                    and node.func.id in ("getattr", "hasattr")
                    and node.args
                    and isinstance(node.args[0], ast.Name)
                    and node.args[0].id == "settings"
                ):
                    name = ast.unparse(node.args[1]) if len(node.args) > 1 else "?"
                    fallbacks.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    assert fallbacks == []
    for name in (
        "BROKER_API_TOKEN_SECONDS",
        "BROKER_API_RATE_LIMIT",
        "BROKER_TRUSTED_ISSUERS",
        "BROKER_REFRESH_LOCK_TIMEOUT",
        "BROKER_REDIS_KEY_PREFIX",
    ):
        assert hasattr(settings, name), name
