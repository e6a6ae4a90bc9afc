"""Settings for the broker, read from the environment (django-environ).

With DEBUG off every secret must be given and HTTPS is enforced; with DEBUG on, development
defaults apply. Any secret NAME may instead be read from the file named by NAME_FILE.
"""

import os
import tempfile
from pathlib import Path
from typing import Any

import environ
from django.core.exceptions import ImproperlyConfigured

from broker.crypto.key_ring import KeyRing, KeyRingError
from broker.infra.redis_connection import celery_broker_url, parse_sentinel_addresses
from broker.ops.logging_config import logging_settings

BASE_DIR = Path(__file__).resolve().parent.parent
# NAME=value lines read before anything else, never overriding the real environment, only
# from the file BROKER_ENV_FILE names. Never a default: the checkout's `.env` that `make dev`
# writes (DEBUG=1, the sandbox's IdP) must not reach a production command run in the same
# checkout; make dev names it for its own processes.
ENV_FILE = os.environ.get("BROKER_ENV_FILE", "")
if ENV_FILE and Path(ENV_FILE).is_file():
    environ.Env.read_env(ENV_FILE)
DATA_DIR = Path(environ.Env().str("BROKER_DATA_DIR", default=str(BASE_DIR / "data")))

env = environ.Env()
DEBUG = env.bool("DEBUG", default=False)


def secret(name: str, dev_default: str | None = None, *, default: str | None = None) -> str:
    """A secret from NAME, or from the file named by NAME_FILE (a mounted Kubernetes or
    Compose secret); required unless DEBUG, or unless it has a `default`."""
    value = env.str(name, default="")
    path = env.str(f"{name}_FILE", default="")
    if not value and path:
        try:
            value = Path(path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE: cannot read {path}: {exc.strerror}") from exc
    if value:
        return value
    if default is not None:
        return default
    if DEBUG and dev_default is not None:
        return dev_default
    raise ImproperlyConfigured(f"{name} is not set (required when DEBUG is off)")


def dev_encryption_keys() -> str:
    """In development, a key kept in the data dir so that stored tokens survive restarts."""
    path = DATA_DIR / "dev-encryption.key"
    if not path.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(KeyRing.generate_entry("dev1") + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = secret(
    "SECRET_KEY", dev_default="dev-only-insecure-secret-key-do-not-use-in-production"
)
try:
    ENCRYPTION_KEYRING = KeyRing.parse(
        secret("BROKER_ENCRYPTION_KEYS", dev_default=dev_encryption_keys() if DEBUG else None)
    )
except KeyRingError as exc:
    raise ImproperlyConfigured(f"BROKER_ENCRYPTION_KEYS: {exc}") from exc

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1"] if DEBUG else [])
# The URL users reach the broker at: redirect URIs and links are built from it.
BROKER_PUBLIC_URL = env.str(
    "BROKER_PUBLIC_URL", default="http://localhost:8000" if DEBUG else ""
).rstrip("/")
BROKER_PROVIDERS_FILE = env.str("BROKER_PROVIDERS_FILE", default="")
BROKER_ALLOW_HTTP = env.bool("BROKER_ALLOW_HTTP", default=False)
# Seconds one call to a provider may take in total, however slowly it answers (token,
# identity, resources, revocation and OAuth 1.0a endpoints); the refresh lock outlasts it.
BROKER_PROVIDER_TIMEOUT = env.float("BROKER_PROVIDER_TIMEOUT", default=10.0)
# The proxy (/api/v1/proxy/<app>/<path>): seconds one proxied call may take in total (both
# tries and the response body), and the largest request and response bodies it relays.
BROKER_PROXY_TIMEOUT = env.float("BROKER_PROXY_TIMEOUT", default=30.0)
BROKER_PROXY_MAX_REQUEST_BYTES = env.int("BROKER_PROXY_MAX_REQUEST_BYTES", default=10 * 1024 * 1024)
BROKER_PROXY_MAX_RESPONSE_BYTES = env.int(
    "BROKER_PROXY_MAX_RESPONSE_BYTES", default=50 * 1024 * 1024
)
# Origins (scheme://host[:port]) that a consent may return to besides the broker itself.
BROKER_RETURN_URL_ALLOWLIST = env.list("BROKER_RETURN_URL_ALLOWLIST", default=[])
# URLs that may carry a password are secrets too (NAME_FILE).
REDIS_URL = secret("REDIS_URL", default="redis://127.0.0.1:6379/0")
# Redis Sentinel: every Redis use (broker.infra.redis_connection, the cache, Celery) follows
# the master the sentinels name; REDIS_URL (and CELERY_BROKER_URL) then give only the
# database number and password.
try:
    BROKER_REDIS_SENTINELS = parse_sentinel_addresses(
        env.list("BROKER_REDIS_SENTINELS", default=[])
    )
except ValueError as exc:
    raise ImproperlyConfigured(f"BROKER_REDIS_SENTINELS: {exc}") from exc
BROKER_REDIS_SENTINEL_MASTER = env.str("BROKER_REDIS_SENTINEL_MASTER", default="")
if bool(BROKER_REDIS_SENTINELS) != bool(BROKER_REDIS_SENTINEL_MASTER):
    raise ImproperlyConfigured(
        "BROKER_REDIS_SENTINELS and BROKER_REDIS_SENTINEL_MASTER are set together or not at all"
    )
# Every key the broker keeps in Redis starts with this (broker.infra.redis_connection.redis_key;
# the Django cache's keys too), so that two brokers can share one Redis database.
BROKER_REDIS_KEY_PREFIX = env.str("BROKER_REDIS_KEY_PREFIX", default="broker:")
# Refresh engine (broker.refresh): grants claimed per beat query and per beat run, how long
# a claim lasts before the beat takes the grant again, retry backoff (seconds).
BROKER_REFRESH_BATCH_SIZE = env.int("BROKER_REFRESH_BATCH_SIZE", default=500)
BROKER_REFRESH_MAX_BATCHES = env.int("BROKER_REFRESH_MAX_BATCHES", default=20)
BROKER_REFRESH_CLAIM_TIMEOUT = env.float("BROKER_REFRESH_CLAIM_TIMEOUT", default=300.0)
BROKER_REFRESH_BACKOFF_BASE = env.float("BROKER_REFRESH_BACKOFF_BASE", default=5.0)
BROKER_REFRESH_BACKOFF_MAX = env.float("BROKER_REFRESH_BACKOFF_MAX", default=300.0)
BROKER_REFRESH_TASK_MAX_RETRIES = env.int("BROKER_REFRESH_TASK_MAX_RETRIES", default=5)
BROKER_REFRESH_TASK_MAX_COUNTDOWN = env.float("BROKER_REFRESH_TASK_MAX_COUNTDOWN", default=120.0)
# Default: 2 x BROKER_PROVIDER_TIMEOUT + 10 s (see broker.refresh.timing.lock_timeout).
BROKER_REFRESH_LOCK_TIMEOUT = env.float("BROKER_REFRESH_LOCK_TIMEOUT", default=0.0) or None
# Webhook targets must be public addresses unless they fall in one of these networks
# (CIDR, comma-separated), e.g. an internal service's subnet.
BROKER_WEBHOOK_ALLOWED_NETWORKS = env.list("BROKER_WEBHOOK_ALLOWED_NETWORKS", default=[])
# /metrics: a Bearer token and/or client networks; every one configured must match, and
# with neither set the endpoint answers 403.
BROKER_METRICS_TOKEN = env.str("BROKER_METRICS_TOKEN", default="")
BROKER_METRICS_ALLOWED_NETWORKS = env.list("BROKER_METRICS_ALLOWED_NETWORKS", default=[])
# Reverse proxies in front of the broker (hops): the client address is read from
# X-Forwarded-For counted from the right (broker.infra.client_address); 0 never reads the header.
BROKER_TRUSTED_PROXIES = env.int("BROKER_TRUSTED_PROXIES", default=0)

# Single sign-on with the company's OpenID Connect provider (accounts.oidc_client); off
# without an issuer. BROKER_PASSWORD_LOGIN=0 leaves only single sign-on on the web.
BROKER_OIDC_ISSUER = env.str("BROKER_OIDC_ISSUER", default="")
BROKER_OIDC_CLIENT_ID = env.str("BROKER_OIDC_CLIENT_ID", default="")
BROKER_OIDC_CLIENT_SECRET = secret("BROKER_OIDC_CLIENT_SECRET") if BROKER_OIDC_ISSUER else ""
BROKER_OIDC_NAME = env.str("BROKER_OIDC_NAME", default="single sign-on")
BROKER_OIDC_SCOPES = env.str("BROKER_OIDC_SCOPES", default="openid email profile")
BROKER_OIDC_USERNAME_CLAIM = env.str("BROKER_OIDC_USERNAME_CLAIM", default="preferred_username")
BROKER_OIDC_GROUPS_CLAIM = env.str("BROKER_OIDC_GROUPS_CLAIM", default="groups")
BROKER_OIDC_ADMIN_GROUPS = env.list("BROKER_OIDC_ADMIN_GROUPS", default=[])
BROKER_OIDC_AUDITOR_GROUPS = env.list("BROKER_OIDC_AUDITOR_GROUPS", default=[])
BROKER_PASSWORD_LOGIN = env.bool("BROKER_PASSWORD_LOGIN", default=True)
if BROKER_OIDC_ISSUER and not BROKER_OIDC_CLIENT_ID:
    raise ImproperlyConfigured("BROKER_OIDC_ISSUER is set but BROKER_OIDC_CLIENT_ID is not")
if not BROKER_PASSWORD_LOGIN and not BROKER_OIDC_ISSUER:
    raise ImproperlyConfigured("BROKER_PASSWORD_LOGIN=0 needs BROKER_OIDC_ISSUER (no sign-in left)")

INSTALLED_APPS = [
    # Django's admin, whose sign-in page offers single sign-on (accounts.admin_site).
    "accounts.admin_apps.BrokerAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "accounts",
    "broker",
]

MIDDLEWARE = [
    "broker.ops.logging_config.RequestLogMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Serves /static/ from STATIC_ROOT (collectstatic): gunicorn serves nothing else.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "broker.ops.request_guard.RefuseNulMiddleware",
    "broker.ops.security_headers.ContentSecurityPolicyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "broker.ops.database_busy.DatabaseBusyMiddleware",
]

ROOT_URLCONF = "broker.urls"
WSGI_APPLICATION = "broker.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
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

# PostgreSQL is reached through PgBouncer in transaction pooling (see below).
BROKER_DB_BEHIND_PGBOUNCER = env.bool("BROKER_DB_BEHIND_PGBOUNCER", default=False)
DATABASES = {
    "default": env.db_url_config(
        secret("DATABASE_URL", default=f"sqlite:///{DATA_DIR / 'broker.sqlite3'}")
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # IMMEDIATE transactions and WAL let the web, worker and beat processes share one file
    # without "database is locked" errors; the test database is a file for the same reason.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / "test-broker.sqlite3")}
else:
    # PostgreSQL: a bounded pool of connections per process (psycopg_pool), so that
    # processes x BROKER_DB_POOL_MAX_SIZE stays under the server's max_connections however
    # many threads serve requests. A request that finds no free connection waits
    # BROKER_DB_POOL_TIMEOUT seconds, then gets 503 + Retry-After (broker.ops.database_busy).
    # The pool keeps connections itself: Django's persistent connections must be off.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        **DATABASES["default"].get("OPTIONS", {}),
        "pool": {
            "min_size": env.int("BROKER_DB_POOL_MIN_SIZE", default=1),
            "max_size": env.int("BROKER_DB_POOL_MAX_SIZE", default=10),
            "timeout": env.float("BROKER_DB_POOL_TIMEOUT", default=5.0),
        },
    }
    # Behind PgBouncer in transaction pooling, each transaction may run on another server
    # connection, so nothing may outlive one. The pool above stays (its connections go to
    # PgBouncer, which holds a server connection only during a transaction). Server-side
    # cursors (QuerySet.iterator: the audit export) would be fetched from on a connection
    # that never declared them; prepared statements (psycopg's automatic ones, should
    # server-side binding ever be turned on) likewise. Django's one session setting, the
    # time zone, is one PgBouncer tracks and applies itself.
    if BROKER_DB_BEHIND_PGBOUNCER:
        DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = True
        DATABASES["default"]["OPTIONS"]["prepare_threshold"] = None
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": BROKER_REDIS_KEY_PREFIX.removesuffix(":"),
        "OPTIONS": {"pool_class": "broker.infra.redis_connection.SharedPool"},
    }
}

AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = ["accounts.password_login.PasswordBackend"]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/connections/"
LOGOUT_REDIRECT_URL = "/accounts/login/"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
# The largest request body read (Django raises RequestDataTooBig beyond it: the API answers
# 413, pages 400). Nothing the broker accepts comes near it.
DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# `manage.py collectstatic` writes compressed copies with content-hashed names, which
# WhiteNoise serves with a one-year immutable Cache-Control.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

# Security headers. HTTPS is enforced outside development unless explicitly allowed for
# loopback testing.
ENFORCE_HTTPS = not DEBUG and not BROKER_ALLOW_HTTP
if not DEBUG and not BROKER_PUBLIC_URL:
    raise ImproperlyConfigured("BROKER_PUBLIC_URL is not set (required when DEBUG is off)")
if ENFORCE_HTTPS and not BROKER_PUBLIC_URL.startswith("https://"):
    raise ImproperlyConfigured("BROKER_PUBLIC_URL must start with https:// when DEBUG is off")
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = ENFORCE_HTTPS
SESSION_COOKIE_SECURE = ENFORCE_HTTPS
CSRF_COOKIE_SECURE = ENFORCE_HTTPS
SECURE_HSTS_SECONDS = 31536000 if ENFORCE_HTTPS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = ENFORCE_HTTPS
SECURE_HSTS_PRELOAD = ENFORCE_HTTPS
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[BROKER_PUBLIC_URL])
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)

# Celery: JSON only, one task at a time per worker process, acknowledged after it ran so a
# killed worker's task is delivered again. The visibility timeout must outlast the refresh
# lock (see broker.refresh.lock) so a slow task is not handed to a second worker meanwhile.
# The Redis URL of Celery's queue (the metrics read its depth there); Celery's own URL is
# kombu's sentinel:// form of it when sentinels are set.
REDIS_CELERY_QUEUE_URL = secret("CELERY_BROKER_URL", default=REDIS_URL)
CELERY_BROKER_URL = celery_broker_url(REDIS_CELERY_QUEUE_URL, BROKER_REDIS_SENTINELS)
CELERY_TASK_DEFAULT_QUEUE = "celery"
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, Any] = {"visibility_timeout": 3600}
if BROKER_REDIS_SENTINELS:
    CELERY_BROKER_TRANSPORT_OPTIONS["master_name"] = BROKER_REDIS_SENTINEL_MASTER
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_BEAT_SCHEDULE: dict[str, dict[str, object]] = {
    "purge-expired-consent-state": {
        "task": "broker.consent.purge_expired_consent_state",
        "schedule": 3600.0,
    },
    # Atlassian refresh tokens die a year after consent, API tokens on their expiry date:
    # users are told 14 days and 1 day ahead.
    "warn-of-expiring-grants": {
        "task": "broker.expiry_warnings.warn_of_expiring_grants",
        "schedule": 3600.0,
    },
    # API-token grants become reconnect_required once their token has expired.
    "end-expired-api-tokens": {
        "task": "broker.refresh.end_expired_api_tokens",
        "schedule": 600.0,
    },
    # Audit events older than BROKER_AUDIT_RETENTION_DAYS are deleted (broker.audit.retention).
    "prune-audit-events": {"task": "broker.audit.prune_old_events", "schedule": 86400.0},
    "claim-due-refreshes": {
        "task": "broker.tasks.enqueue_due_refreshes",
        "schedule": env.float("BROKER_REFRESH_BEAT_SECONDS", default=15.0),
        # A run that waited longer than its period is superseded by the next one.
        "options": {"expires": env.float("BROKER_REFRESH_BEAT_SECONDS", default=15.0)},
    },
}
# Task modules besides broker.refresh.tasks (each concern keeps its tasks beside its logic).
CELERY_IMPORTS = [
    "broker.refresh.tasks",
    "broker.revocation.revoke",
    "broker.revocation.bulk",
    "broker.notify.dispatch",
    "broker.audit.trail",
    "broker.audit.retention",
    "broker.consent.pending",
    "broker.notify.expiry_warnings",
    "broker.refresh.api_token_expiry",
]
# Keep the Django LOGGING configuration (JSON, redaction) in workers too.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Beat's record of when each periodic task last ran: a cache (without it each task first
# runs one period after beat starts), so the default is the temporary directory, writable
# by any user, never the working directory (the checkout, or a read-only image).
CELERY_BEAT_SCHEDULE_FILENAME = env.str(
    "BROKER_BEAT_SCHEDULE_FILE",
    default=str(Path(tempfile.gettempdir()) / f"broker-celerybeat-schedule-{os.getuid()}"),
)

# Email to users (reconnect needed, revoked by an admin): EMAIL_URL, e.g.
# smtp+tls://user:password@mail.example:587; the console in development.
vars().update(
    env.email_url_config(
        secret("EMAIL_URL", default="consolemail://" if DEBUG else "smtp://localhost:25")
    )
)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="broker@localhost")
# Seconds for each step of a conversation with the mail server; a server that does not
# answer in time is tried again later (broker.notify.dispatch.email_user).
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=10)

# Internal API (broker.api): broker token lifetime, per-service requests per minute (0: no
# limit), and identity providers whose app tokens services may authenticate with.
BROKER_API_TOKEN_SECONDS = env.int("BROKER_API_TOKEN_SECONDS", default=300)
BROKER_API_RATE_LIMIT = env.int("BROKER_API_RATE_LIMIT", default=6000)
# Failed authentications per minute (wrong secrets, bad assertions, invalid bearer tokens)
# from one address and for one claimed client id before answering 429 (0: no limit).
BROKER_AUTH_FAILURES_PER_ADDRESS = env.int("BROKER_AUTH_FAILURES_PER_ADDRESS", default=20)
BROKER_AUTH_FAILURES_PER_CLIENT = env.int("BROKER_AUTH_FAILURES_PER_CLIENT", default=100)
BROKER_TRUSTED_ISSUERS = env.json("BROKER_TRUSTED_ISSUERS", default=[])
# Issuers, besides BROKER_OIDC_ISSUER, whose user tokens services may exchange (RFC 8693)
# for the user's provider tokens (comma-separated; keys found through their discovery).
BROKER_SUBJECT_ISSUERS = env.list("BROKER_SUBJECT_ISSUERS", default=[])
# Identity providers' key sets (JWKS; broker.infra.key_sets): fetched at most once per
# BROKER_JWKS_REFETCH_SECONDS per issuer and process, also for a token naming an unknown
# `kid` (so a rolled key is picked up within it), and used for at most
# BROKER_JWKS_MAX_AGE_SECONDS.
BROKER_JWKS_REFETCH_SECONDS = env.float("BROKER_JWKS_REFETCH_SECONDS", default=60.0)
BROKER_JWKS_MAX_AGE_SECONDS = env.float("BROKER_JWKS_MAX_AGE_SECONDS", default=600.0)
# Audit events older than this many days are deleted, daily by the beat (and by
# `manage.py pruneaudit`); 0 keeps them forever. 400: a year, plus a month to export it.
try:
    BROKER_AUDIT_RETENTION_DAYS = env.int("BROKER_AUDIT_RETENTION_DAYS", default=400)
except ValueError:
    BROKER_AUDIT_RETENTION_DAYS = -1
if BROKER_AUDIT_RETENTION_DAYS < 0:
    raise ImproperlyConfigured(
        "BROKER_AUDIT_RETENTION_DAYS must be a whole number of days, 0 (keep forever) or more"
    )

LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
# LOG_FORMAT=json writes one JSON object per line; secrets are redacted either way.
LOG_FORMAT = env.str("LOG_FORMAT", default="plain")
try:
    LOGGING = logging_settings(LOG_LEVEL, LOG_FORMAT)
except ValueError as exc:
    raise ImproperlyConfigured(str(exc)) from exc
