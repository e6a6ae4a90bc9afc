from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.db.models import Model
from django.http import HttpRequest

from accounts.models import ExternalIdentity, ScimConnection, ScimUser, User


class ExternalIdentityInline(admin.TabularInline):
    """Who the user is at the single sign-on IdP; made by sign-in, never edited by hand."""

    model = ExternalIdentity
    fields = readonly_fields = ("issuer", "subject", "created_at")
    extra = 0
    can_delete = True  # unlinks: the next sign-in as that person is then a new user

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


class ScimUserInline(admin.TabularInline):
    """The SCIM resource the IdP provisioned this user as; made by SCIM, never by hand."""

    model = ScimUser
    fields = readonly_fields = ("id", "connection", "external_id", "created_at")
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    inlines = [ExternalIdentityInline, ScimUserInline]


@admin.register(ScimConnection)
class ScimConnectionAdmin(admin.ModelAdmin):
    """IdPs that provision by SCIM. Tokens are issued and rotated by `manage.py
    createscimtoken NAME` (shown once); here a connection can only be switched off."""

    list_display = ("name", "token_last4", "token_created_at", "enabled")
    fields = ("name", "token_last4", "token_created_at", "enabled", "created_at")
    readonly_fields = ("name", "token_last4", "token_created_at", "created_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
