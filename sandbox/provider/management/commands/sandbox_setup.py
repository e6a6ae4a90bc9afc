"""Create the sandbox's demo users and provider registrations, and write the broker's
providers file (the TOML that `manage.py loadproviders` reads) and, with --sso-env, the
broker's single sign-on settings for the sandbox as an OIDC IdP. Safe to re-run."""

import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction
from oauth2_provider.models import Application

from sandbox.provider.models import OAuth1Consumer

DEMO_USERS = [
    ("alice", "alice-sandbox", "Alice", "Anders"),
    ("bob", "bob-sandbox", "Bob", "Brown"),
    ("carol", "carol-sandbox", "Carol", "Chen"),
]
# The `groups` claim of each demo user's ID token (sandbox.provider.oidc): carol administers
# the broker, bob audits it (BROKER_OIDC_ADMIN_GROUPS / BROKER_OIDC_AUDITOR_GROUPS below).
DEMO_GROUPS = {
    "alice": ["engineering"],
    "bob": ["broker-auditors"],
    "carol": ["broker-admins", "engineering"],
}
ADMIN_GROUP, AUDITOR_GROUP = "broker-admins", "broker-auditors"
SSO_CLIENT_ID = "broker-sso"
# A service that signs its own users in at the sandbox IdP (an assistant's web front): the
# ID tokens issued to it (`aud` = its client id) are what it exchanges at the broker (RFC
# 8693), never the broker's own. A public client (PKCE), so a developer needs no secret.
DEMO_SERVICE_CLIENT_ID = "demo-assistant"
DEMO_SERVICE_REDIRECT_URI = "http://127.0.0.1:8002/oidc/callback"
RSA_CONSUMER_KEY = "broker-sandbox-rsa"
HMAC_CONSUMER_KEY = "broker-sandbox-hmac"
PRIVATE_KEY_FILENAME = "sandbox-jira-rsa.pem"


@dataclass(frozen=True)
class OAuth2App:
    slug: str
    name: str

    @property
    def client_id(self) -> str:
        return f"broker-{self.slug}"

    @property
    def client_secret(self) -> str:
        return derived_secret(f"oauth2-client-secret:{self.slug}")


OAUTH2_APPS = [
    OAuth2App("sandbox", "Sandbox Cloud"),
    OAuth2App("sandbox-dc", "Sandbox Jira DC (OAuth 2.0)"),
    OAuth2App("sandbox-generic", "Sandbox generic OAuth 2.0"),
]


def derived_secret(purpose: str) -> str:
    """Stable across re-runs without storing plaintext: DOT keeps only a hash."""
    key = settings.SECRET_KEY.encode()
    return hmac.new(key, purpose.encode(), hashlib.sha256).hexdigest()


def toml_string(value: str) -> str:
    # JSON string escapes are valid TOML basic-string escapes.
    return json.dumps(value)


def toml_list(values: list[str]) -> str:
    return "[" + ", ".join(toml_string(v) for v in values) + "]"


def ensure_private_key(path: Path) -> rsa.RSAPrivateKey:
    """Generate the broker's RSA key once (mode 0600); later runs reuse it."""
    if not path.exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TypeError(f"{path} is not an RSA private key")
    return key


def public_pem(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def ensure_users() -> None:
    user_model = get_user_model()
    for username, password, first, last in DEMO_USERS:
        user, _ = user_model.objects.get_or_create(username=username)
        user.first_name, user.last_name = first, last
        user.email = f"{username}@sandbox.example"
        user.set_password(password)
        user.save()
        user.groups.set(
            [Group.objects.get_or_create(name=name)[0] for name in DEMO_GROUPS[username]]
        )


def ensure_oauth2_app(app: OAuth2App, broker_url: str) -> None:
    Application.objects.update_or_create(
        client_id=app.client_id,
        defaults={
            "name": app.name,
            "client_type": Application.CLIENT_CONFIDENTIAL,
            "authorization_grant_type": Application.GRANT_AUTHORIZATION_CODE,
            "redirect_uris": f"{broker_url}/oauth/callback/{app.slug}",
            "client_secret": app.client_secret,
            "hash_client_secret": True,
            "skip_authorization": False,
        },
    )


def sso_client_secret() -> str:
    return derived_secret("oidc-client-secret:broker")


def ensure_sso_app(broker_url: str) -> None:
    """The broker as an OpenID Connect relying party: its people sign in with the sandbox."""
    Application.objects.update_or_create(
        client_id=SSO_CLIENT_ID,
        defaults={
            "name": "Broker single sign-on",
            "client_type": Application.CLIENT_CONFIDENTIAL,
            "authorization_grant_type": Application.GRANT_AUTHORIZATION_CODE,
            "redirect_uris": f"{broker_url}/accounts/oidc/callback",
            "post_logout_redirect_uris": f"{broker_url}/accounts/login/",
            "client_secret": sso_client_secret(),
            "hash_client_secret": True,
            "algorithm": Application.RS256_ALGORITHM,
            # A company IdP asks nothing of its people when they sign in to an internal app.
            "skip_authorization": True,
        },
    )


def ensure_demo_service_app() -> None:
    Application.objects.update_or_create(
        client_id=DEMO_SERVICE_CLIENT_ID,
        defaults={
            "name": "Demo assistant (a service's own sign-in)",
            "client_type": Application.CLIENT_PUBLIC,
            "authorization_grant_type": Application.GRANT_AUTHORIZATION_CODE,
            "redirect_uris": DEMO_SERVICE_REDIRECT_URI,
            "client_secret": "",
            "algorithm": Application.RS256_ALGORITHM,
            "skip_authorization": True,
        },
    )


def sso_settings() -> str:
    """The broker's BROKER_OIDC_* settings for the sandbox IdP, as NAME=value lines."""
    values = {
        "BROKER_OIDC_ISSUER": settings.OAUTH2_PROVIDER["OIDC_ISS_ENDPOINT"],
        "BROKER_OIDC_CLIENT_ID": SSO_CLIENT_ID,
        "BROKER_OIDC_CLIENT_SECRET": sso_client_secret(),
        "BROKER_OIDC_NAME": "Sandbox SSO",
        "BROKER_OIDC_ADMIN_GROUPS": ADMIN_GROUP,
        "BROKER_OIDC_AUDITOR_GROUPS": AUDITOR_GROUP,
    }
    return "".join(f"{name}={value}\n" for name, value in values.items())


def ensure_oauth1_consumers(private_key: rsa.RSAPrivateKey) -> None:
    OAuth1Consumer.objects.update_or_create(
        key=RSA_CONSUMER_KEY,
        defaults={
            "name": "Sandbox Jira DC (OAuth 1.0a)",
            "rsa_public_key": public_pem(private_key),
            "shared_secret": "",
        },
    )
    OAuth1Consumer.objects.update_or_create(
        key=HMAC_CONSUMER_KEY,
        defaults={
            "name": "Sandbox Jira DC (HMAC)",
            "rsa_public_key": "",
            "shared_secret": hmac_consumer_secret(),
        },
    )


def hmac_consumer_secret() -> str:
    return derived_secret(f"oauth1-consumer-secret:{HMAC_CONSUMER_KEY}")


def providers_toml(private_key_path: Path) -> str:
    base = settings.SANDBOX_PUBLIC_URL
    cloud, dc, generic = OAUTH2_APPS
    lines = [
        "# Written by `python sandbox/manage.py sandbox_setup`: the sandbox provider's apps.",
        "# Development only; the secrets below are dev-only literals.",
        "",
        f"[apps.{cloud.slug}]",
        'kind = "atlassian"',
        f"name = {toml_string(cloud.name)}",
        f"client_id = {toml_string(cloud.client_id)}",
        f"client_secret = {toml_string(cloud.client_secret)}",
        'scopes = ["read:me", "read:jira-work", "offline_access"]',
        f"[apps.{cloud.slug}.endpoints]",
        f"authorize = {toml_string(base + '/oauth/authorize')}",
        f"token = {toml_string(base + '/oauth/token')}",
        f"identity = {toml_string(base + '/me')}",
        f"resources = {toml_string(base + '/oauth/token/accessible-resources')}",
        f"revoke = {toml_string(base + '/oauth/revoke')}",
        f"api = {toml_string(base)}",
        f"account = {toml_string(base + '/manage-profile/apps')}",
        "",
        f"[apps.{dc.slug}]",
        'kind = "jira-dc-oauth2"',
        f"name = {toml_string(dc.name)}",
        f"base_url = {toml_string(base)}",
        f"client_id = {toml_string(dc.client_id)}",
        f"client_secret = {toml_string(dc.client_secret)}",
        'scopes = ["READ", "WRITE"]',
        f"[apps.{dc.slug}.endpoints]",
        f"revoke = {toml_string(base + '/oauth/revoke')}",
        f"account = {toml_string(base + '/manage-profile/apps')}",
        "",
        f"[apps.{generic.slug}]",
        'kind = "oauth2"',
        f"name = {toml_string(generic.name)}",
        f"client_id = {toml_string(generic.client_id)}",
        f"client_secret = {toml_string(generic.client_secret)}",
        'scopes = ["read:me", "offline_access"]',
        f"[apps.{generic.slug}.endpoints]",
        f"authorize = {toml_string(base + '/oauth/authorize')}",
        f"token = {toml_string(base + '/oauth/token')}",
        f"identity = {toml_string(base + '/me')}",
        f"revoke = {toml_string(base + '/oauth/revoke')}",
        f"api = {toml_string(base)}",
        f"account = {toml_string(base + '/manage-profile/apps')}",
        "",
        "[apps.sandbox-jira]",
        'kind = "jira-dc-oauth1"',
        'name = "Sandbox Jira DC (OAuth 1.0a)"',
        f"base_url = {toml_string(base)}",
        f"consumer_key = {toml_string(RSA_CONSUMER_KEY)}",
        f"private_key = {toml_string('file:' + str(private_key_path))}",
        'signature_method = "RSA-SHA1"',
        "",
        "[apps.sandbox-jira-hmac]",
        'kind = "jira-dc-oauth1"',
        'name = "Sandbox Jira DC (HMAC)"',
        f"base_url = {toml_string(base)}",
        f"consumer_key = {toml_string(HMAC_CONSUMER_KEY)}",
        f"consumer_secret = {toml_string(hmac_consumer_secret())}",
        'signature_method = "HMAC-SHA1"',
        "",
        "# Atlassian Cloud API tokens (Basic auth): make one at /manage-profile/security/",
        "[apps.sandbox-api-token]",
        'kind = "atlassian-api-token"',
        'name = "Sandbox Atlassian (API token)"',
        f"base_url = {toml_string(base)}",
        "[apps.sandbox-api-token.endpoints]",
        f"account = {toml_string(base + '/manage-profile/security/api-tokens')}",
    ]
    return "\n".join(lines) + "\n"


class Command(BaseCommand):
    help = "Create demo users and provider apps; write the broker's providers TOML."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--broker-url", required=True, help="the broker's public URL")
        parser.add_argument("--out", required=True, help="where to write the providers TOML")
        parser.add_argument("--sso-env", help="where to write the broker's BROKER_OIDC_* lines")

    def handle(
        self, *args: object, broker_url: str, out: str, sso_env: str | None, **options: object
    ) -> None:
        broker_url = broker_url.rstrip("/")
        out_path = Path(out).resolve()
        out_path.parent.mkdir(parents=True, exist_ok=True)
        private_key_path = out_path.parent / PRIVATE_KEY_FILENAME
        private_key = ensure_private_key(private_key_path)
        with transaction.atomic():
            ensure_users()
            for app in OAUTH2_APPS:
                ensure_oauth2_app(app, broker_url)
            ensure_sso_app(broker_url)
            ensure_demo_service_app()
            ensure_oauth1_consumers(private_key)
        out_path.write_text(providers_toml(private_key_path))
        if sso_env:
            Path(sso_env).write_text(sso_settings())
        users = ", ".join(f"{name}/{password}" for name, password, _, _ in DEMO_USERS)
        self.stdout.write(f"sandbox ready: demo users {users}; providers file {out_path}")
