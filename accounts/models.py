import uuid

from django.contrib.auth.models import AbstractUser, Group
from django.db import models

# The group whose members read every broker model in the admin and change nothing (its
# permissions: broker.admin.roles); single sign-on puts the IdP's auditors in it.
AUDITOR_GROUP = "auditor"


class User(AbstractUser):
    """The broker's user. A custom model from the first migration, so it can grow later."""


class ExternalIdentity(models.Model):
    """A person at the company's OpenID Connect provider: (issuer, `sub`) names them for
    good (OIDC Core 2: `sub` is unique and never reassigned within an issuer), whereas
    usernames and emails can change or be reused."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="external_identities")
    issuer = models.CharField(max_length=255)
    subject = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["issuer", "subject"], name="unique_external_identity")
        ]

    def __str__(self) -> str:
        return f"{self.subject} at {self.issuer}"


class ScimConnection(models.Model):
    """One identity provider that provisions users by SCIM 2.0 (RFC 7644), with its bearer
    token: a lookup prefix, a keyed digest and the last four characters, never the token
    (accounts.scim.tokens). Made and rotated by `manage.py createscimtoken NAME`."""

    name = models.CharField(max_length=64, unique=True)
    token_lookup = models.CharField(max_length=16, unique=True)
    token_digest = models.CharField(max_length=64)
    token_last4 = models.CharField(max_length=4)
    token_created_at = models.DateTimeField()
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.name} (…{self.token_last4})"


class ScimUser(models.Model):
    """A user made by SCIM: its SCIM `id`, and the IdP's `externalId`. Only such users are
    seen and changed through SCIM, and only they are linked by username at their first
    single sign-on (accounts.external_identity)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.OneToOneField(User, on_delete=models.CASCADE, related_name="scim")
    connection = models.ForeignKey(ScimConnection, on_delete=models.PROTECT)
    external_id = models.CharField(max_length=255, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"SCIM {self.user}"


class ScimGroup(models.Model):
    """A Django group provisioned by SCIM (`group:NAME` access rules follow it)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    group = models.OneToOneField(Group, on_delete=models.CASCADE, related_name="scim")
    connection = models.ForeignKey(ScimConnection, on_delete=models.PROTECT)
    external_id = models.CharField(max_length=255, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"SCIM {self.group}"
