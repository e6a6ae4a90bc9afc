"""The broker's data: provider apps, grants, services and their rules, audit, pending consents.

Every token, secret and private key lives in a sealed column (broker.crypto.sealed_fields); rows
that hold one get a UUID primary key made in Python, so the ciphertext can be bound to the
row before the first save.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils import timezone

from broker.catalog.provider_kinds import KINDS, ProviderKind, get_kind, resolve_endpoints
from broker.catalog.proxy_paths import validate_proxy_methods, validate_proxy_paths
from broker.crypto.sealed_fields import SealedFieldsModel, sealed_column

PENDING_AUTHORIZATION_LIFETIME = timedelta(minutes=10)


class ProviderApp(SealedFieldsModel):
    """One registered OAuth client (or OAuth 1.0a consumer) at one provider."""

    SEALED_FIELDS = ("client_secret", "private_key")

    class SignatureMethod(models.TextChoices):
        RSA_SHA1 = "RSA-SHA1"
        HMAC_SHA1 = "HMAC-SHA1"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    slug = models.SlugField(max_length=64, unique=True)
    kind = models.CharField(max_length=32, choices=[(k.name, k.label) for k in KINDS.values()])
    name = models.CharField(max_length=200)
    client_id = models.CharField("client ID / consumer key", max_length=255, blank=True, default="")
    client_secret_sealed = sealed_column()
    private_key_sealed = sealed_column()
    signature_method = models.CharField(
        max_length=16, choices=SignatureMethod.choices, blank=True, default=""
    )
    base_url = models.URLField(blank=True, default="")
    endpoints = models.JSONField(default=dict, blank=True, help_text="Overrides of the kind's URLs")
    scopes = models.JSONField(default=list, blank=True)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.slug})"

    @property
    def catalog_entry(self) -> ProviderKind:
        return get_kind(self.kind)

    @property
    def protocol(self) -> str:
        return self.catalog_entry.protocol

    def endpoint_urls(self) -> dict[str, str]:
        return resolve_endpoints(self.catalog_entry, self.base_url, self.endpoints)

    def endpoint(self, name: str) -> str | None:
        return self.endpoint_urls().get(name)


# A grant whose refresh token (or API token) dies regardless of use is shown as needing
# reconnection this long before it does, and its user and services are told then and once
# more FINAL_WARNING before (broker.notify.expiry_warnings).
RECONNECT_WARNING = timedelta(days=14)
FINAL_WARNING = timedelta(days=1)


class Grant(SealedFieldsModel):
    """One user's consent at one provider account, and the tokens it yields."""

    # api_token: an Atlassian API token (kinds of protocol "api_token"), sent only by the
    # proxy as Basic auth and never handed to a service; its own column, so no code path
    # that serves access tokens can ever read it.
    SEALED_FIELDS = ("access_token", "refresh_token", "token_secret", "api_token")

    class Status(models.TextChoices):
        ACTIVE = "active"
        RECONNECT_REQUIRED = "reconnect_required"
        REVOKED = "revoked"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="grants"
    )
    provider_app = models.ForeignKey(ProviderApp, on_delete=models.PROTECT, related_name="grants")
    external_account_id = models.CharField(max_length=255)
    account_name = models.CharField(max_length=255, blank=True, default="")
    account_email = models.CharField(max_length=255, blank=True, default="")
    scopes = models.JSONField(default=list, blank=True)
    # Atlassian sites: [{"id": cloud id, "url": ..., "name": ..., "scopes": [...]}]
    resources = models.JSONField(default=list, blank=True)
    status = models.CharField(max_length=32, choices=Status.choices, default=Status.ACTIVE)

    access_token_sealed = sealed_column()
    refresh_token_sealed = sealed_column()
    token_secret_sealed = sealed_column()
    api_token_sealed = sealed_column()
    access_expires_at = models.DateTimeField(null=True, blank=True)
    refresh_expires_at = models.DateTimeField(
        null=True, blank=True, help_text="When the refresh token lapses if unused"
    )
    # For an API-token grant: when the API token expires (the date its owner chose).
    refresh_absolute_expires_at = models.DateTimeField(
        null=True, blank=True, help_text="When the refresh token lapses regardless of use"
    )
    # Set once the user and services were told of refresh_absolute_expires_at, 14 days and
    # 1 day ahead (conditional UPDATEs from null, so concurrent beats tell them once); a
    # consent clears both.
    expiry_warning_sent_at = models.DateTimeField(null=True, blank=True)
    final_expiry_warning_sent_at = models.DateTimeField(null=True, blank=True)
    # OAuth 2.0: the redirect URI the consent used. Data Center wants the same one on every
    # refresh, whatever BROKER_PUBLIC_URL has become since.
    redirect_uri = models.CharField(max_length=2000, blank=True, default="")
    # Bumped by every write of new tokens; a writer that read an older value lost a race.
    token_version = models.PositiveIntegerField(default=0)

    next_refresh_at = models.DateTimeField(null=True, blank=True)
    refresh_enqueued_at = models.DateTimeField(null=True, blank=True)
    last_refreshed_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    last_used_by = models.ForeignKey(
        "ServiceClient", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    failure_count = models.PositiveIntegerField(default=0)
    last_error = models.CharField(max_length=500, blank=True, default="")

    consented_at = models.DateTimeField(default=timezone.now)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_reason = models.CharField(max_length=500, blank=True, default="")

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["user", "provider_app", "external_account_id"],
                condition=~Q(status="revoked"),
                name="one_live_grant_per_account",
            )
        ]
        indexes = [
            models.Index(fields=["status", "next_refresh_at"], name="grant_due_refresh_idx"),
            models.Index(fields=["provider_app", "status"], name="grant_app_status_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.account_name or self.external_account_id} @ {self.provider_app.slug}"

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE

    @property
    def needs_reconnect_soon(self) -> bool:
        """The refresh token dies regardless of use soon (Atlassian: 365 days after consent):
        the user page, the admin and the API show this so the user reconnects in time."""
        return self.reconnect_needed_by(timezone.now())

    def reconnect_needed_by(self, now: datetime) -> bool:
        """True when the refresh token's absolute lifetime ends within RECONNECT_WARNING."""
        if self.refresh_absolute_expires_at is None:
            return False
        return self.refresh_absolute_expires_at - now <= RECONNECT_WARNING

    def access_token_valid_for(self, seconds: float) -> bool:
        """True when the stored access token exists and stays valid at least `seconds` more."""
        if not self.has_secret("access_token"):
            return False
        if self.access_expires_at is None:  # OAuth 1.0a tokens, or providers without expiry
            return True
        return self.access_expires_at - timezone.now() >= timedelta(seconds=seconds)


def validate_string_list(value: object) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValidationError('Enter a list of strings, e.g. ["assistant-web"].')


def own_sign_in_audience_refused(audiences: object) -> ValidationError | None:
    """The broker's own client id at the IdP is never a service's subject audience: the
    ID tokens issued to it are the ones users sign in to the broker with, which no service
    should hold, so accepting them would let any service holding one (a log, a backup)
    act for that user. A service exchanges tokens the IdP issued to it (its own client id)."""
    own = settings.BROKER_OIDC_CLIENT_ID
    if own and isinstance(audiences, list) and own in audiences:
        return ValidationError(
            f"{own!r} is the broker's own sign-in client at the IdP (BROKER_OIDC_CLIENT_ID); "
            "register the audience of tokens issued to this service (its own client id)."
        )
    return None


class ServiceClient(SealedFieldsModel):
    """An internal service that fetches tokens over the API."""

    SEALED_FIELDS = ("webhook_secret",)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    client_id = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    enabled = models.BooleanField(default=True)
    # Secrets are stored only as a keyed digest plus their last characters, for recognition.
    secret_digest = models.CharField(max_length=128, blank=True, default="")
    secret_last4 = models.CharField(max_length=4, blank=True, default="")
    secret_created_at = models.DateTimeField(null=True, blank=True)
    previous_secret_digest = models.CharField(max_length=128, blank=True, default="")
    previous_secret_valid_until = models.DateTimeField(null=True, blank=True)
    # Bumped when the service is disabled or a secret is rotated out; broker tokens carry it.
    credentials_generation = models.PositiveIntegerField(default=1)
    webhook_url = models.URLField(blank=True, default="")
    webhook_secret_sealed = sealed_column()
    # The `aud` values of the user tokens (from the company IdP) this service may exchange
    # (RFC 8693): a token a user gave to one service is useless to another.
    subject_audiences = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_string_list],
        help_text='The "aud" of users\' tokens it may present, e.g. ["broker-sso"]',
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.client_id})"

    def clean(self) -> None:
        refusal = own_sign_in_audience_refused(self.subject_audiences)
        if refusal:
            raise ValidationError({"subject_audiences": refusal})

    def save(self, *args: Any, **kwargs: Any) -> None:
        # Every writer of the audiences (commands, the admin, code), not only forms; a save
        # of other fields (disabling, rotating) never fails on a row written before.
        update_fields = kwargs.get("update_fields")
        if update_fields is None or "subject_audiences" in update_fields:
            refusal = own_sign_in_audience_refused(self.subject_audiences)
            if refusal:
                raise ValidationError({"subject_audiences": refusal})
        super().save(*args, **kwargs)


class ServiceKey(models.Model):
    """A public key or X.509 certificate a service signs private_key_jwt assertions with."""

    service = models.ForeignKey(ServiceClient, on_delete=models.CASCADE, related_name="keys")
    kid = models.CharField(max_length=128, help_text="RFC 7638 JWK thumbprint")
    x5t_s256 = models.CharField(max_length=128, blank=True, default="")
    public_key_pem = models.TextField()
    certificate_pem = models.TextField(blank=True, default="")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["service", "kid"], name="one_key_per_thumbprint")
        ]

    def __str__(self) -> str:
        return f"{self.service.client_id} key {self.kid[:12]}"


class AccessRule(models.Model):
    """What one service may get: tokens of one provider app, some scopes, some users."""

    service = models.ForeignKey(ServiceClient, on_delete=models.CASCADE, related_name="rules")
    provider_app = models.ForeignKey(ProviderApp, on_delete=models.CASCADE, related_name="rules")
    scopes = models.JSONField(
        default=list, blank=True, help_text="Scopes the service may receive; empty: the app's"
    )
    users_group = models.ForeignKey(
        Group, null=True, blank=True, on_delete=models.CASCADE, help_text="Empty: all users"
    )
    can_sign = models.BooleanField(default=False, help_text="May sign OAuth 1.0a requests")
    can_create_connect_links = models.BooleanField(default=False)
    on_behalf_of = models.BooleanField(
        default=False,
        help_text="Only for a signed-in user: the service must present the user's token "
        "(token exchange, or Broker-Subject-Token), never just name the user",
    )
    # The proxy (/api/v1/proxy/<app>/<path>): what the service may call there.
    proxy_methods = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_proxy_methods],
        help_text='HTTP methods the service may send through the proxy, e.g. ["GET"]; empty: any',
    )
    proxy_paths = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_proxy_paths],
        help_text="Paths the service may call through the proxy: * is one segment, ** any "
        'number, e.g. ["/ex/jira/*/rest/api/3/**"]; empty: any',
    )
    proxy_only = models.BooleanField(
        default=False,
        help_text="The service never receives the raw token (access-token and token exchange "
        "answer 403): it calls the provider only through the proxy",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["service", "provider_app", "users_group"], name="one_rule_per_app_and_group"
            )
        ]

    def __str__(self) -> str:
        who = f"group {self.users_group}" if self.users_group_id else "all users"
        return f"{self.service.client_id} -> {self.provider_app.slug} ({who})"

    def allowed_scopes(self) -> list[str]:
        return list(self.scopes or self.provider_app.scopes)


class AuditEvent(models.Model):
    """Append-only record of what happened. Holds identifiers, never a token or secret.

    References are plain values rather than foreign keys so that events outlive the rows
    they describe.
    """

    class ActorType(models.TextChoices):
        USER = "user"
        SERVICE = "service"
        ADMIN = "admin"
        SYSTEM = "system"

    class Outcome(models.TextChoices):
        SUCCESS = "success"
        DENIED = "denied"
        FAILURE = "failure"

    at = models.DateTimeField(default=timezone.now)
    actor_type = models.CharField(max_length=16, choices=ActorType.choices)
    actor = models.CharField(max_length=255, blank=True, default="")
    action = models.CharField(max_length=64)
    outcome = models.CharField(max_length=16, choices=Outcome.choices, default=Outcome.SUCCESS)
    grant_id = models.UUIDField(null=True, blank=True)
    subject_user = models.CharField(max_length=150, blank=True, default="")
    provider = models.CharField(max_length=64, blank=True, default="")
    service = models.CharField(max_length=64, blank=True, default="")
    scopes = models.JSONField(default=list, blank=True)
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    detail = models.JSONField(default=dict, blank=True)
    # Set by broker.audit.trail on every event (unique: an event is one row, however it
    # was written). Null on older rows.
    event_id = models.UUIDField(null=True, blank=True, unique=True, editable=False)

    class Meta:
        ordering = ["-at"]
        indexes = [
            models.Index(fields=["at"], name="audit_at_idx"),
            models.Index(fields=["grant_id", "at"], name="audit_grant_idx"),
            models.Index(fields=["subject_user", "at"], name="audit_user_idx"),
            models.Index(fields=["service", "at"], name="audit_service_idx"),
            models.Index(fields=["action", "at"], name="audit_action_idx"),
        ]

    def __str__(self) -> str:
        when = f"{self.at:%Y-%m-%d %H:%M:%S}"
        return f"{when} {self.actor_type}:{self.actor} {self.action} {self.outcome}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None and not self._state.adding:
            raise ValueError("audit events are append-only")
        super().save(*args, **kwargs)


def default_pending_expiry() -> Any:
    return timezone.now() + PENDING_AUTHORIZATION_LIFETIME


class PendingAuthorization(SealedFieldsModel):
    """Server-side state of one consent in progress: single use, bound to a user and session."""

    SEALED_FIELDS = ("code_verifier", "request_token_secret")

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    state = models.CharField(max_length=128, unique=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    # A digest of the session key: the callback must arrive in the session that started it.
    session_digest = models.CharField(max_length=128)
    provider_app = models.ForeignKey(ProviderApp, on_delete=models.CASCADE, related_name="+")
    scopes = models.JSONField(default=list, blank=True)
    return_to = models.CharField(max_length=2000, blank=True, default="")
    redirect_uri = models.CharField(max_length=2000, blank=True, default="")
    code_verifier_sealed = sealed_column()
    # OAuth 1.0a: the request token travels in URLs anyway, so it is a plain lookup key.
    request_token = models.CharField(max_length=255, blank=True, default="", db_index=True)
    request_token_secret_sealed = sealed_column()
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(default=default_pending_expiry)
    consumed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["expires_at"], name="pending_expiry_idx")]

    def __str__(self) -> str:
        return f"pending consent for {self.provider_app.slug}"


class ConnectLink(models.Model):
    """A single-use link a service made to send one user through consent and back."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    token_digest = models.CharField(max_length=128, unique=True)
    service = models.ForeignKey(ServiceClient, on_delete=models.CASCADE, related_name="+")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    provider_app = models.ForeignKey(ProviderApp, on_delete=models.CASCADE, related_name="+")
    scopes = models.JSONField(default=list, blank=True)
    return_to = models.CharField(max_length=2000)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"connect link for {self.user} at {self.provider_app.slug}"


class RevocationJob(models.Model):
    """A bulk revocation (offboarding, incident): its criteria and visible progress.

    Processing is resumable: a re-run selects the grants that still match and are not yet
    revoked, so a killed worker's job finishes without revoking anything twice.
    """

    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # One of {"user": username}, {"provider": app slug}, {"service": client id}, {"all": true}.
    criteria = models.JSONField()
    reason = models.CharField(max_length=500)
    requested_by = models.CharField(max_length=255)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    total = models.PositiveIntegerField(null=True, blank=True)
    done = models.PositiveIntegerField(default=0, help_text="Grants this job revoked")
    failed = models.PositiveIntegerField(default=0)
    last_error = models.CharField(max_length=500, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        what = ", ".join(f"{k}={v}" for k, v in self.criteria.items())
        return f"revoke {what} ({self.status})"


class WebhookDelivery(models.Model):
    """One event sent (or to be sent) to one service's webhook URL; attempts hang off it.

    The body is fixed when the event happens, so every retry sends the same bytes; only the
    timestamp and signature change per attempt.
    """

    class Status(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        FAILED = "failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    service = models.ForeignKey(ServiceClient, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=64)
    grant_id = models.UUIDField(null=True, blank=True)
    url = models.URLField(max_length=2000)
    body = models.TextField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempt_count = models.PositiveIntegerField(default=0)
    last_error = models.CharField(max_length=500, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "webhook deliveries"

    def __str__(self) -> str:
        return f"{self.event} -> {self.service.client_id} ({self.status})"


class WebhookAttempt(models.Model):
    """One HTTP attempt of a delivery: what came back, never what was sent."""

    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempts")
    number = models.PositiveIntegerField()
    at = models.DateTimeField(default=timezone.now)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True, default="")
    duration_ms = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["number"]

    def __str__(self) -> str:
        return f"attempt {self.number}: {self.status_code or self.error}"
