from django.contrib.auth.models import AbstractUser
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
