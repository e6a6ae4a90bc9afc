"""Settings of the development-only sandbox provider.

This is a separate Django project from the broker: its own database, cookies and port.
It is never imported by the broker's settings.
"""

import os
from pathlib import Path
from urllib.parse import urlsplit

import environ

from broker.ops.logging_config import logging_settings

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, "") or default


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value else default


def default_database_url() -> str:
    data_dir = PROJECT_ROOT / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{data_dir / 'sandbox.sqlite3'}"


def oidc_private_key() -> str:
    """The RSA key that signs the sandbox's ID tokens (RS256): SANDBOX_OIDC_KEY_FILE, by
    default data/sandbox-oidc-rsa.pem, generated on first use. Dev-only."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    path = Path(
        env_str("SANDBOX_OIDC_KEY_FILE", str(PROJECT_ROOT / "data" / "sandbox-oidc-rsa.pem"))
    )
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:  # several sandbox processes may start at once: the first one writes it
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
    return path.read_text()


def database_config(url: str) -> dict:
    config = environ.Env.db_url_config(url)
    if config["ENGINE"] == "django.db.backends.sqlite3":
        Path(config["NAME"]).parent.mkdir(parents=True, exist_ok=True)
        # Several threads (and the tests' concurrent callers) write at once: WAL lets
        # readers run beside the writer, IMMEDIATE takes the write lock up front so
        # transactions queue on the busy timeout instead of failing "database is locked".
        config["OPTIONS"] = {
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    return config


SECRET_KEY = env_str("SANDBOX_SECRET_KEY", "sandbox-dev-only-secret-key-not-for-production")
DEBUG = True
SANDBOX_PUBLIC_URL = env_str("SANDBOX_PUBLIC_URL", "http://localhost:8001").rstrip("/")
# Its own public host too: the fault drills serve it on an address of their bridge.
ALLOWED_HOSTS = ["localhost", "127.0.0.1", urlsplit(SANDBOX_PUBLIC_URL).hostname or "localhost"]
SANDBOX_ACCESS_TOKEN_SECONDS = env_int("SANDBOX_ACCESS_TOKEN_SECONDS", 3600)
# The broker's request log line names the client's address (broker.infra.client_address);
# the sandbox runs with no proxy in front.
BROKER_TRUSTED_PROXIES = 0
SANDBOX_TEST_SWITCHES = os.environ.get("SANDBOX_TEST_SWITCHES", "") == "1"

INSTALLED_APPS = [
    # First, so its templates override django-oauth-toolkit's consent page.
    "sandbox.provider",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "oauth2_provider",
]

MIDDLEWARE = [
    # One line per request, without the query strings that carry codes and tokens.
    "broker.ops.logging_config.RequestLogMiddleware",
    "sandbox.provider.request_counter.RequestCounterMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "sandbox.urls"
WSGI_APPLICATION = "sandbox.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": database_config(env_str("SANDBOX_DATABASE_URL", "") or default_database_url())
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Browsers share cookies across ports of one host name: distinct names keep a sandbox
# sign-in from replacing the broker's session (the broker runs on localhost too).
SESSION_COOKIE_NAME = "sandbox_sessionid"
CSRF_COOKIE_NAME = "sandbox_csrftoken"

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"

# Every token request verifies a hashed client secret; Django's default 1M PBKDF2
# iterations would make each one take a noticeable fraction of a second. Dev-only data.
PASSWORD_HASHERS = [
    "sandbox.provider.hashers.SandboxPBKDF2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]

USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"

ATLASSIAN_SCOPES = {
    "read:me": "Read your profile",
    "read:jira-work": "Read Jira project and issue data",
    "write:jira-work": "Create and edit Jira issues",
    "read:jira-user": "Read Jira user information",
    "manage:jira-project": "Manage Jira projects",
    "offline_access": "Stay connected (refresh tokens)",
    "read:confluence-content.all": "Read Confluence content",
    "write:confluence-content": "Write Confluence content",
    "search:confluence": "Search Confluence",
}
DATA_CENTER_SCOPES = {
    "READ": "Read (Data Center)",
    "WRITE": "Write (Data Center)",
    "ADMIN": "Administer (Data Center)",
    "SYSTEM_ADMIN": "System administration (Data Center)",
}

OIDC_SCOPES = {
    "openid": "Sign you in (OpenID Connect)",
    "profile": "Your name and username",
    "email": "Your email address",
}

OAUTH2_PROVIDER = {
    "SCOPES": {**ATLASSIAN_SCOPES, **DATA_CENTER_SCOPES, **OIDC_SCOPES},
    "DEFAULT_SCOPES": ["read:me", "read:jira-work", "offline_access"],
    "OAUTH2_BACKEND_CLASS": "sandbox.provider.oauth2_backend.SandboxOAuthLibCore",
    "ACCESS_TOKEN_EXPIRE_SECONDS": SANDBOX_ACCESS_TOKEN_SECONDS,
    "AUTHORIZATION_CODE_EXPIRE_SECONDS": 600,
    # Atlassian rotates refresh tokens and kills the family on reuse; the broker must
    # cope with that, so the sandbox is strict: no grace period at all.
    "ROTATE_REFRESH_TOKEN": True,
    "REFRESH_TOKEN_REUSE_PROTECTION": True,
    "REFRESH_TOKEN_GRACE_PERIOD_SECONDS": 0,
    # The issuer identifier (RFC 8414/9207). Atlassian sends no `iss` on the callback, so
    # neither does the sandbox (COMPLIANT_BCP_RFC9700_AUTHZ_RESPONSE_ISS stays off).
    "OIDC_ISS_ENDPOINT": SANDBOX_PUBLIC_URL,
    "PKCE_REQUIRED": False,
    "ALLOWED_REDIRECT_URI_SCHEMES": ["http", "https"],
    "ALLOWED_SCHEMES": ["http", "https"],
    # The sandbox is also the OpenID Connect IdP the broker signs people in with (RS256 ID
    # tokens with a `groups` claim; discovery, JWKS and RP-initiated logout).
    "OIDC_ENABLED": True,
    "OIDC_RSA_PRIVATE_KEY": oidc_private_key(),
    "OIDC_RP_INITIATED_LOGOUT_ENABLED": True,
    "OIDC_RP_INITIATED_LOGOUT_ALWAYS_PROMPT": False,
    "OIDC_RP_INITIATED_LOGOUT_STRICT_REDIRECT_URIS": True,
    "OAUTH2_VALIDATOR_CLASS": "sandbox.provider.oidc.SandboxOAuth2Validator",
}

# The broker's logging, with its redaction filter: `make dev` merges the sandbox's lines
# with the broker's, and neither may show a client secret, code, verifier or token.
LOGGING = logging_settings(env_str("LOG_LEVEL", "INFO"), env_str("LOG_FORMAT", "plain"))
