from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.db.models import Model
from django.http import HttpRequest

from accounts.models import ExternalIdentity, User


class ExternalIdentityInline(admin.TabularInline):
    """Who the user is at the single sign-on IdP; made by sign-in, never edited by hand."""

    model = ExternalIdentity
    fields = readonly_fields = ("issuer", "subject", "created_at")
    extra = 0
    can_delete = True  # unlinks: the next sign-in as that person is then a new user

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    inlines = [ExternalIdentityInline]
