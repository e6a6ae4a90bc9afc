"""Test settings: production settings, with fixed test secrets and loopback HTTP allowed."""

import os

# Not the developer's .env (make dev's DEBUG=1 and URLs): tests set what they need.
os.environ.setdefault("BROKER_ENV_FILE", "")
os.environ.setdefault("DEBUG", "0")
os.environ.setdefault("BROKER_ALLOW_HTTP", "1")
os.environ.setdefault("SECRET_KEY", "test-secret-key-not-for-production-0123456789abcdef")
# Two keys: "test2" encrypts, "test1" still decrypts (tests rotate between them).
os.environ.setdefault(
    "BROKER_ENCRYPTION_KEYS",
    "test2:N2QwYjE4ZDQ5MjQ3ZWFkZjQ1YTQ2NzIyZmQ1OGNiM2U=,"
    "test1:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
)
os.environ.setdefault("BROKER_PUBLIC_URL", "http://localhost:8000")
os.environ.setdefault("ALLOWED_HOSTS", "localhost,127.0.0.1,testserver")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/9")

from broker.settings import *  # noqa: E402,F403
from broker.settings import DATA_DIR  # noqa: E402

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# Static files as in development (no collectstatic before the tests): the production
# storage and serving are tested by tests/test_static_files.py.
STORAGES = {
    **STORAGES,  # noqa: F405
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True


# Test receivers (webhooks, fake providers) listen on loopback.
BROKER_WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8"]

# The SQLite test database lives in the data dir, which a clean clone does not have yet.
DATA_DIR.mkdir(parents=True, exist_ok=True)
