"""State of the sandbox provider: OAuth 1.0a consumers and tokens, and test switches.

OAuth 2.0 state lives in django-oauth-toolkit's own models.
"""

from datetime import datetime, timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone

# Jira Data Center's defaults: access tokens and authorizations last five years.
OAUTH1_ACCESS_TOKEN_SECONDS = 157_680_000
OAUTH1_REQUEST_TOKEN_SECONDS = 600
OAUTH1_DENIED_VERIFIER = "denied"


class OAuth1Consumer(models.Model):
    """An application link with incoming OAuth 1.0a: RSA public key or shared secret."""

    key = models.CharField(max_length=200, unique=True)
    name = models.CharField(max_length=200)
    rsa_public_key = models.TextField(blank=True)
    # Dev-only sandbox: HMAC-SHA1 needs the plaintext secret to recompute signatures.
    shared_secret = models.CharField(max_length=200, blank=True)

    def __str__(self) -> str:
        return self.key

    @property
    def uses_rsa(self) -> bool:
        return bool(self.rsa_public_key)


class OAuth1RequestToken(models.Model):
    consumer = models.ForeignKey(OAuth1Consumer, on_delete=models.CASCADE)
    token = models.CharField(max_length=100, unique=True)
    secret = models.CharField(max_length=100)
    callback = models.TextField()
    verifier = models.CharField(max_length=100, blank=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE
    )
    created = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"request token for {self.consumer}"

    @property
    def is_expired(self) -> bool:
        return self.created < timezone.now() - timedelta(seconds=OAUTH1_REQUEST_TOKEN_SECONDS)


def oauth1_access_token_expiry() -> datetime:
    return timezone.now() + timedelta(seconds=OAUTH1_ACCESS_TOKEN_SECONDS)


class OAuth1AccessToken(models.Model):
    consumer = models.ForeignKey(OAuth1Consumer, on_delete=models.CASCADE)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    token = models.CharField(max_length=100, unique=True)
    secret = models.CharField(max_length=100)
    session_handle = models.CharField(max_length=100)
    created = models.DateTimeField(default=timezone.now)
    expires = models.DateTimeField(default=oauth1_access_token_expiry)
    revoked = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"access token for {self.user} at {self.consumer}"

    @property
    def is_live(self) -> bool:
        return self.revoked is None and self.expires > timezone.now()


class OAuth1Nonce(models.Model):
    """A used nonce (RFC 5849 3.3): the unique constraint makes each one single-use."""

    consumer_key = models.CharField(max_length=200)
    timestamp = models.BigIntegerField()
    nonce = models.CharField(max_length=200)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = (
            models.UniqueConstraint(
                fields=["consumer_key", "timestamp", "nonce"], name="oauth1_nonce_once"
            ),
        )

    def __str__(self) -> str:
        return self.nonce


class FaultMode(models.TextChoices):
    NONE = "none"
    ERROR500 = "error500"
    SLOW = "slow"
    RATELIMIT = "ratelimit"


class TokenEndpointFault(models.Model):
    """The one fault injected into the token endpoints (a single row, pk=1).

    Stored in the database so every thread and process of the sandbox sees it.
    """

    mode = models.CharField(max_length=20, choices=FaultMode.choices, default=FaultMode.NONE)
    delay = models.FloatField(default=0)
    retry_after = models.IntegerField(default=1)
    # None: until cleared; otherwise how many more token requests it affects.
    remaining = models.IntegerField(null=True, blank=True)

    def __str__(self) -> str:
        return self.mode


class Counter(models.Model):
    name = models.CharField(max_length=100, unique=True)
    value = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.name}={self.value}"
