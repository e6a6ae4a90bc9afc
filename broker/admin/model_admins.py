"""The Django admin for staff: provider apps, grants, service clients, audit log, bulk revocation.

Secrets are write-only here: forms accept a new client secret or private key but never
render one back, sealed columns are excluded from every page, and service secrets are shown
once, in the response that created them, and stored nowhere in clear. Every change made
here is written to the audit log (`admin.change`). The auditor group has view permissions
only; actions declare the permission they need, so an auditor sees none that change things.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.models import LogEntry
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Model, OuterRef, Q, QuerySet, Subquery
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.views.decorators.debug import sensitive_post_parameters

from accounts.models import User
from broker.audit import trail
from broker.catalog.provider_kinds import KINDS
from broker.consent.api_tokens import ApiTokenForm, ApiTokenRefused, store_api_token
from broker.models import (
    AccessRule,
    AuditEvent,
    Grant,
    ProviderApp,
    RevocationJob,
    ServiceClient,
    ServiceKey,
    WebhookAttempt,
    WebhookDelivery,
)
from broker.providers.api_token_auth import API_TOKEN_KINDS
from broker.providers.app_validation import app_problems
from broker.providers.oauth1_consumer import ConsumerMisconfigured, public_key_pem
from broker.refresh.claims import claim_now
from broker.refresh.tasks import enqueue_refreshes
from broker.revocation import bulk
from broker.revocation.revoke import revoke_grant
from broker.service_identity import service_secrets
from broker.service_identity.service_keys import (
    ServiceKeyError,
    parse_certificate,
    parse_public_key,
)
from broker.service_identity.tokens import disable_service

admin.site.site_header = "OAuth broker administration"
admin.site.site_title = "OAuth broker admin"
# The lists (grants, audit events) need the width; the breadcrumbs and the index navigate.
admin.site.enable_nav_sidebar = False


def actor_name(request: HttpRequest) -> str:
    return request.user.get_username() if request.user.is_authenticated else ""


def admin_event(request: HttpRequest, action: str, **fields: Any) -> None:
    """An audit event for something an admin did in the admin site."""
    trail.record(
        action,
        actor_type=trail.ActorType.ADMIN,
        actor=actor_name(request),
        request=request,
        **fields,
    )


def confirmation_page(
    request: HttpRequest,
    admin_: admin.ModelAdmin,
    template: str,
    title: str,
    form: forms.Form,
    action: str,
    **context: Any,
) -> TemplateResponse:
    """The page an admin action shows before it acts: its form, posted back to the same
    action with the selected rows."""
    return TemplateResponse(
        request,
        template,
        {
            **admin_.admin_site.each_context(request),
            "title": title,
            "opts": admin_.model._meta,
            "form": form,
            "action": action,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            **context,
        },
    )


class AuditedAdmin(admin.ModelAdmin):
    """Writes every add, change and delete made in the admin to the audit log as well.

    Django's change messages name the fields that changed, never their values."""

    def _audit(self, request: HttpRequest, obj: Model, what: str, message: Any) -> None:
        admin_event(
            request,
            "admin.change",
            model=obj._meta.label,
            object_id=str(obj.pk),
            object=str(obj)[:200],
            change=what,
            message=str(message)[:1000],
        )

    def log_addition(self, request: HttpRequest, obj: Model, message: Any) -> LogEntry:
        self._audit(request, obj, "added", message)
        return super().log_addition(request, obj, message)

    def log_change(self, request: HttpRequest, obj: Model, message: Any) -> LogEntry:
        self._audit(request, obj, "changed", message)
        return super().log_change(request, obj, message)

    def log_deletions(self, request: HttpRequest, queryset: QuerySet[Any]) -> Any:
        for obj in queryset:
            self._audit(request, obj, "deleted", "")
        return super().log_deletions(request, queryset)


class RecordAdmin(admin.ModelAdmin):
    """A record of what happened (audit events, webhook deliveries): viewed, never added,
    changed or deleted in the admin."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class WriteOnlyTextarea(forms.Textarea):
    """A textarea that never renders a value back, not even after a failed submit."""

    def format_value(self, value: Any) -> None:
        return None


# ---------------------------------------------------------------- provider apps


# The providers file's field names (app_validation's problems) -> this form's fields.
FORM_FIELD_OF = {
    "base_url": "base_url",
    "endpoints": "endpoints",
    "client_id": "client_id",
    "consumer_key": "client_id",
    "client_secret": "new_client_secret",
    "consumer_secret": "new_client_secret",
    "private_key": "new_private_key",
    "signature_method": "signature_method",
}


class ProviderAppForm(forms.ModelForm):
    new_client_secret = forms.CharField(
        label="Set client secret / consumer secret",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only: leave empty to keep the stored secret.",
    )
    new_private_key = forms.CharField(
        label="Set RSA private key (PEM)",
        required=False,
        strip=True,
        widget=WriteOnlyTextarea(attrs={"rows": 4, "autocomplete": "off"}),
        help_text="OAuth 1.0a RSA-SHA1 consumers. Write-only: leave empty to keep the stored key.",
    )

    class Meta:
        model = ProviderApp
        fields = [
            "slug",
            "name",
            "kind",
            "enabled",
            "client_id",
            "signature_method",
            "base_url",
            "endpoints",
            "scopes",
        ]

    def clean(self) -> dict[str, Any]:
        """The rules `loadproviders` applies to the providers file (broker.providers.
        app_validation), against what the app will hold: the typed secret or key, else the
        stored one."""
        cleaned: dict[str, Any] = super().clean() or {}
        kind = KINDS.get(cleaned.get("kind") or "")
        if kind is None:
            return cleaned  # the kind field reports it
        app = self.instance
        problems = app_problems(
            kind,
            client_id=cleaned.get("client_id") or "",
            base_url=cleaned.get("base_url") or "",
            endpoints=cleaned.get("endpoints", {}),
            signature_method=cleaned.get("signature_method") or "",
            secret=cleaned.get("new_client_secret") or app.unseal("client_secret") or "",
            private_key=cleaned.get("new_private_key") or app.unseal("private_key") or "",
        )
        for problem in problems:
            field = FORM_FIELD_OF[problem.field]
            if field not in self.errors:  # the field's own validation said it first
                self.add_error(field, problem.message)
        return cleaned

    def save(self, commit: bool = True) -> Any:
        app: ProviderApp = super().save(commit=False)
        if self.cleaned_data.get("new_client_secret"):
            app.seal("client_secret", self.cleaned_data["new_client_secret"])
        if self.cleaned_data.get("new_private_key"):
            app.seal("private_key", self.cleaned_data["new_private_key"])
        if commit:
            app.save()
        return app


@admin.register(ProviderApp)
class ProviderAppAdmin(AuditedAdmin):
    form = ProviderAppForm
    list_display = ["name", "slug", "kind", "client_id", "enabled", "secret_status"]
    list_filter = ["kind", "enabled"]
    search_fields = ["slug", "name", "client_id"]
    readonly_fields = ["secret_status", "public_key", "created_at", "updated_at"]
    actions = ["enable_apps", "disable_apps"]

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        main = ["slug", "name", "kind", "enabled", "client_id", "signature_method", "base_url"]
        secrets = ["secret_status", "new_client_secret", "new_private_key", "public_key"]
        if not self.has_change_permission(request, obj):
            secrets = ["secret_status", "public_key"]  # read-only views show no inputs
        return [
            (None, {"fields": main}),
            ("Endpoints and scopes", {"fields": ["endpoints", "scopes"]}),
            ("Secrets (write-only)", {"fields": secrets}),
            ("History", {"fields": ["created_at", "updated_at"]}),
        ]

    @admin.display(description="secrets stored")
    def secret_status(self, app: ProviderApp) -> str:
        held = [
            label
            for field, label in (("client_secret", "client secret"), ("private_key", "private key"))
            if app.has_secret(field)
        ]
        return ", ".join(held) or "none"

    @admin.display(description="public key (register this at the provider)")
    def public_key(self, app: ProviderApp) -> str:
        if not app.has_secret("private_key"):
            return "-"  # also an app being added, whose kind is not chosen yet
        try:
            pem = public_key_pem(app)
        except ConsumerMisconfigured:  # an unreadable key is reported, never shown
            return "(the stored private key cannot be read)"
        return format_html("<pre>{}</pre>", pem) if pem else "-"

    @admin.action(description="Enable selected provider apps", permissions=["change"])
    def enable_apps(self, request: HttpRequest, queryset: QuerySet[ProviderApp]) -> None:
        self._set_enabled(request, queryset, True)

    @admin.action(description="Disable selected provider apps", permissions=["change"])
    def disable_apps(self, request: HttpRequest, queryset: QuerySet[ProviderApp]) -> None:
        self._set_enabled(request, queryset, False)

    def _set_enabled(
        self, request: HttpRequest, queryset: QuerySet[ProviderApp], enabled: bool
    ) -> None:
        for app in queryset:
            if app.enabled != enabled:
                app.enabled = enabled
                app.save(update_fields=["enabled", "updated_at"])
                self.log_change(request, app, [{"changed": {"fields": ["enabled"]}}])
        self.message_user(request, f"{queryset.count()} app(s) {'en' if enabled else 'dis'}abled.")


# ---------------------------------------------------------------- grants

GRANT_FIELDS = (
    "id",
    "user",
    "provider_app",
    "external_account_id",
    "account_name",
    "account_email",
    "status",
    "scopes",
    "resources",
    "access_expires_at",
    "refresh_expires_at",
    "refresh_absolute_expires_at",
    "expiry_warning_sent_at",
    "redirect_uri",
    "token_version",
    "next_refresh_at",
    "last_refreshed_at",
    "last_used_at",
    "last_used_by",
    "failure_count",
    "last_error",
    "consented_at",
    "created_at",
    "updated_at",
    "revoked_at",
    "revoked_reason",
    "upstream_revocation",
)


class AdminApiTokenForm(ApiTokenForm):
    """An admin stores an API token for a user (a service account, a script's owner)."""

    user = forms.ModelChoiceField(queryset=User.objects.filter(is_active=True).order_by("username"))
    provider_app = forms.ModelChoiceField(
        queryset=ProviderApp.objects.filter(enabled=True, kind__in=API_TOKEN_KINDS),
        label="App",
        help_text="An app of an API-token kind (e.g. atlassian-api-token).",
    )
    field_order = ["user", "provider_app", "email", "api_token", "expires_on"]


class ReasonForm(forms.Form):
    reason = forms.CharField(max_length=500, strip=True, widget=forms.TextInput(attrs={"size": 60}))


@admin.register(Grant)
class GrantAdmin(AuditedAdmin):
    # Short cells (slugs and client ids, not the related rows' long names), so that the
    # list fits a 1400 px window beside the filters; broker/admin.css keeps them unwrapped.
    list_display = [
        "account",
        "user",
        "provider",
        "status",
        "reconnect_soon",
        "access_expires_at",
        "last_used_at",
        "last_used_by_service",
        "next_refresh_at",
    ]
    list_filter = ["status", "provider_app", "user", "last_used_by"]
    search_fields = ["user__username", "account_name", "account_email", "external_account_id"]
    list_select_related = ["user", "provider_app", "last_used_by"]
    # Sealed columns are not editable model fields, and are listed nowhere here.
    fields = GRANT_FIELDS
    readonly_fields = GRANT_FIELDS
    actions = ["revoke_selected", "refresh_selected"]

    @method_decorator(sensitive_post_parameters("api_token"))
    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        """The "Add grant" page. Grants come from consent, except API tokens: an admin
        stores one for a user here, checked at the provider first."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = AdminApiTokenForm(request.POST if request.method == "POST" else None)
        if form.is_valid():
            try:
                grant, replaced = store_api_token(
                    form.cleaned_data["user"],
                    form.cleaned_data["provider_app"],
                    form,
                    actor_type=trail.ActorType.ADMIN,
                    actor=actor_name(request),
                    request=request,
                )
            except ApiTokenRefused as exc:
                form.add_error(None, str(exc))
            else:
                done = "replaced" if replaced else "stored"
                self.message_user(request, f"API token {done} for {grant}.", messages.SUCCESS)
                return redirect("admin:broker_grant_change", grant.pk)
        return TemplateResponse(
            request,
            "admin/broker/grant/api_token.html",
            {
                **self.admin_site.each_context(request),
                "title": "Store an API token",
                "opts": self.model._meta,
                "form": form,
            },
            status=400 if form.is_bound else 200,
        )

    @admin.display(description="account", ordering="account_name")
    def account(self, grant: Grant) -> str:
        return grant.account_name or grant.external_account_id

    @admin.display(description="provider", ordering="provider_app__slug")
    def provider(self, grant: Grant) -> str:
        return grant.provider_app.slug

    @admin.display(description="last used by", ordering="last_used_by__client_id")
    def last_used_by_service(self, grant: Grant) -> str:
        return grant.last_used_by.client_id if grant.last_used_by else ""

    @admin.display(description="reconnect")
    def reconnect_soon(self, grant: Grant) -> str:
        """ "soon" or nothing: a red cross for "not soon" would read as an error."""
        return "soon" if grant.needs_reconnect_soon else ""

    @admin.action(description="Refresh selected grants now", permissions=["change"])
    def refresh_selected(self, request: HttpRequest, queryset: QuerySet[Grant]) -> None:
        """Claims every selected active grant that can be refreshed, due or not, and queues
        its refresh task; the engine's single flight makes this safe beside scheduled and
        on-demand refreshes."""
        selected = [str(pk) for pk in queryset.values_list("pk", flat=True)]
        grant_ids = claim_now(selected, on_claimed=enqueue_refreshes)
        for grant_id in grant_ids:
            admin_event(request, "grant.refresh_requested", grant_id=grant_id)
        self.message_user(request, f"{len(grant_ids)} grant(s) queued for refresh.")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A grant's page is read-only (consent, refresh and revocation change grants, the
        # latter two through the list's actions, which need this permission without an
        # object): no Save buttons, and a posted form is refused.
        return obj is None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # deleting would skip the upstream revocation and the audit trail

    @admin.display(description="upstream revocation")
    def upstream_revocation(self, grant: Grant) -> str:
        event = (
            AuditEvent.objects.filter(
                grant_id=grant.pk,
                action__in=["grant.upstream_revoked", "grant.upstream_revoke_failed"],
            )
            .order_by("-at")
            .first()
        )
        if event is None:
            return "-"
        if event.action == "grant.upstream_revoked":
            return f"done {event.at:%Y-%m-%d %H:%M}"
        return f"FAILED {event.at:%Y-%m-%d %H:%M}: {event.detail.get('error', '')}"

    @admin.action(description="Revoke selected grants…", permissions=["change"])
    def revoke_selected(
        self, request: HttpRequest, queryset: QuerySet[Grant]
    ) -> TemplateResponse | None:
        form = ReasonForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            revoked = 0
            for grant_id in queryset.values_list("pk", flat=True):
                revoked += revoke_grant(
                    grant_id,
                    actor_type=trail.ActorType.ADMIN,
                    actor=actor_name(request),
                    reason=form.cleaned_data["reason"],
                    request=request,
                )
            self.message_user(request, f"{revoked} grant(s) revoked.", messages.SUCCESS)
            return None
        return confirmation_page(
            request,
            self,
            "admin/broker/grant/revoke_confirmation.html",
            "Revoke grants",
            form,
            "revoke_selected",
            grants=queryset.select_related("user", "provider_app"),
        )


# ---------------------------------------------------------------- service clients


class ServiceKeyForm(forms.ModelForm):
    class Meta:
        model = ServiceKey
        fields = ["public_key_pem", "certificate_pem", "enabled"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["public_key_pem"].required = False

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        public_pem = (data.get("public_key_pem") or "").strip()
        certificate_pem = (data.get("certificate_pem") or "").strip()
        if not public_pem and not certificate_pem:
            raise forms.ValidationError("give a public key or a certificate")
        try:
            parsed = (
                parse_certificate(certificate_pem)
                if certificate_pem
                else parse_public_key(public_pem)
            )
        except ServiceKeyError as exc:
            raise forms.ValidationError(str(exc)) from None
        data["public_key_pem"] = parsed.public_key_pem
        data["certificate_pem"] = parsed.certificate_pem
        self.instance.kid = parsed.kid
        self.instance.x5t_s256 = parsed.x5t_s256
        return data


class ServiceKeyInline(admin.TabularInline):
    model = ServiceKey
    form = ServiceKeyForm
    extra = 0
    readonly_fields = ["kid", "x5t_s256", "created_at"]


class AccessRuleInline(admin.TabularInline):
    model = AccessRule
    extra = 0
    fields = [
        "provider_app",
        "scopes",
        "users_group",
        "can_sign",
        "can_create_connect_links",
        "on_behalf_of",
        "proxy_only",
        "proxy_methods",
        "proxy_paths",
        "created_at",
    ]
    readonly_fields = ["created_at"]


class GraceForm(forms.Form):
    grace_hours = forms.IntegerField(
        min_value=0,
        max_value=24 * 30,
        initial=24,
        help_text="How long the current secret keeps working (0: it stops at once).",
    )


def issued_secret(
    request: HttpRequest,
    action: str,
    service: ServiceClient,
    kind: str,
    secret: str,
    **detail: Any,
) -> tuple[ServiceClient, str, str]:
    """Audits a secret just issued (never its value); returns it for `secrets_page`."""
    admin_event(request, action, service=service.client_id, **detail)
    return service, kind, secret


def secrets_page(
    request: HttpRequest, admin_: admin.ModelAdmin, issued: list[tuple[ServiceClient, str, str]]
) -> TemplateResponse:
    """Shows newly issued secrets, once: they are in this response and nowhere else."""
    response = TemplateResponse(
        request,
        "admin/broker/serviceclient/secrets_once.html",
        {
            **admin_.admin_site.each_context(request),
            "title": "Copy the new secret now",
            "opts": admin_.model._meta,
            "issued": issued,
        },
    )
    response["Cache-Control"] = "no-store"
    return response


@admin.register(ServiceClient)
class ServiceClientAdmin(AuditedAdmin):
    list_display = ["name", "client_id", "enabled", "secret_last4", "webhook_url"]
    list_filter = ["enabled"]
    search_fields = ["client_id", "name"]
    inlines = [AccessRuleInline, ServiceKeyInline]
    readonly_fields = [
        "secret_last4",
        "secret_created_at",
        "previous_secret_valid_until",
        "credentials_generation",
        "webhook_secret_status",
        "created_at",
        "updated_at",
    ]
    fields = ["client_id", "name", "enabled", "webhook_url", "subject_audiences", *readonly_fields]
    actions = ["rotate_secret", "new_webhook_secret", "disable_services"]

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any):
        help_texts = {
            "subject_audiences": 'The "aud" of users\' tokens it may present: tokens the IdP '
            'issued to this service (its own client id there), e.g. ["assistant-web"]; never '
            "the broker's own sign-in client id"
        }
        return super().get_form(request, obj, change=change, help_texts=help_texts, **kwargs)

    @admin.display(description="webhook secret")
    def webhook_secret_status(self, service: ServiceClient) -> str:
        return "set" if service.has_secret("webhook_secret") else "not set"

    def response_add(
        self, request: HttpRequest, obj: ServiceClient, post_url_continue: str | None = None
    ) -> HttpResponse:
        secret = service_secrets.new_secret(obj)
        issued = [issued_secret(request, "service.secret_issued", obj, "client secret", secret)]
        if obj.webhook_url:  # part of the same event
            issued.append((obj, "webhook secret", service_secrets.new_webhook_secret(obj)))
        return secrets_page(request, self, issued)

    @admin.action(description="Rotate client secret…", permissions=["change"])
    def rotate_secret(
        self, request: HttpRequest, queryset: QuerySet[ServiceClient]
    ) -> TemplateResponse | None:
        form = GraceForm(request.POST if "apply" in request.POST else None)
        if not form.is_valid():
            return confirmation_page(
                request,
                self,
                "admin/broker/serviceclient/rotate_confirmation.html",
                "Rotate service secrets",
                form,
                "rotate_secret",
                services=queryset,
            )
        grace = timedelta(hours=form.cleaned_data["grace_hours"])
        issued = []
        with transaction.atomic():
            for service in queryset.select_for_update():
                secret = service_secrets.rotate_secret(service, grace)
                issued.append(
                    issued_secret(
                        request,
                        "service.secret_rotated",
                        service,
                        "client secret",
                        secret,
                        grace_hours=form.cleaned_data["grace_hours"],
                    )
                )
        return secrets_page(request, self, issued)

    @admin.action(description="Issue a new webhook signing secret", permissions=["change"])
    def new_webhook_secret(
        self, request: HttpRequest, queryset: QuerySet[ServiceClient]
    ) -> TemplateResponse:
        issued = [
            issued_secret(
                request,
                "service.webhook_secret_issued",
                service,
                "webhook secret",
                service_secrets.new_webhook_secret(service),
            )
            for service in queryset
        ]
        return secrets_page(request, self, issued)

    @admin.action(description="Disable selected services", permissions=["change"])
    def disable_services(self, request: HttpRequest, queryset: QuerySet[ServiceClient]) -> None:
        for service in queryset.filter(enabled=True):
            # Its broker tokens already issued stop working at once.
            disable_service(service)
            self.log_change(request, service, [{"changed": {"fields": ["enabled"]}}])
        self.message_user(request, "Selected services disabled.")


# ---------------------------------------------------------------- audit log

AUDIT_CSV_COLUMNS = [
    "at",
    "actor_type",
    "actor",
    "action",
    "outcome",
    "grant_id",
    "subject_user",
    "provider",
    "service",
    "scopes",
    "client_ip",
    "detail",
]


def csv_cell(value: Any) -> str:
    """A cell a spreadsheet will not run as a formula (CSV injection)."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


class _Echo:
    def write(self, value: str) -> str:
        return value


def audit_csv_rows(queryset: QuerySet[AuditEvent]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(AUDIT_CSV_COLUMNS)
    for event in queryset.order_by("at", "pk").iterator(chunk_size=2000):
        row = [getattr(event, column) for column in AUDIT_CSV_COLUMNS]
        row[0] = event.at.isoformat()
        yield writer.writerow([csv_cell(v) for v in row])


class OnBehalfOfFilter(admin.SimpleListFilter):
    """Requests a service made for a signed-in user who presented their token (token
    exchange, Broker-Subject-Token): a narrower question than `UserFilter`'s."""

    title = "on behalf of the user"
    parameter_name = "on_behalf_of"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Yes (the user's token was presented)"), ("no", "No")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[AuditEvent]) -> Any:
        if self.value() == "yes":
            return queryset.filter(detail__on_behalf_of=True)
        if self.value() == "no":
            return queryset.exclude(detail__on_behalf_of=True)
        return queryset


class UserFilter(admin.SimpleListFilter):
    """Every use of a user's grants, in one filter: "which services acted for Alice" is
    this with the actor type (service) and the date. An event belongs to Alice when it
    names her as the user it was for (token fetches, signatures, proxied calls by name or
    grant id, on-behalf-of requests, consents) or concerns one of her grants (whatever
    name it was recorded under)."""

    title = "user (every use of their grants)"
    parameter_name = "user"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        names = User.objects.order_by("username").values_list("username", flat=True)
        return [(name, name) for name in names]

    def queryset(self, request: HttpRequest, queryset: QuerySet[AuditEvent]) -> Any:
        username = self.value()
        if username is None:
            return queryset
        grants = Grant.objects.filter(user__username=username).values("pk")
        return queryset.filter(Q(subject_user=username) | Q(grant_id__in=grants))


@admin.register(AuditEvent)
class AuditEventAdmin(RecordAdmin):
    """Read-only for everyone, superusers included: the log is append-only."""

    # Fits a 1280 px window beside the filters (tests/admin/test_admin_browser.py): the
    # actor in one cell, services by name (client id below), grants by their first
    # characters (the whole id in the tooltip and on the event's page).
    list_display = [
        "at",
        "actor_cell",
        "action",
        "outcome",
        "acted_for",
        "provider",
        "service_cell",
        "grant_cell",
        "client_address",
    ]
    # "Who read Alice's Jira token last week": user + action + provider + date.
    list_filter = [
        ("at", admin.DateFieldListFilter),
        "actor_type",
        ("action", admin.AllValuesFieldListFilter),
        "outcome",
        UserFilter,
        ("provider", admin.AllValuesFieldListFilter),
        ("service", admin.AllValuesFieldListFilter),
        ("actor", admin.AllValuesFieldListFilter),
        OnBehalfOfFilter,
    ]
    search_fields = ["actor", "subject_user", "action", "service", "provider", "grant_id"]
    date_hierarchy = "at"
    actions = ["export_csv"]
    show_full_result_count = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[AuditEvent]:
        # Events name services by client id (they outlive the service's row): its current
        # name comes from one subquery per page, not one query per row.
        names = ServiceClient.objects.filter(client_id=OuterRef("service")).values("name")[:1]
        return super().get_queryset(request).annotate(service_name=Subquery(names))

    @admin.display(description="actor", ordering="actor")
    def actor_cell(self, event: AuditEvent) -> str:
        if not event.actor or event.actor == event.service:
            return event.actor_type  # a service acting itself: named in the service column
        return f"{event.actor_type}: {event.actor}"

    @admin.display(description="acted for", ordering="subject_user")
    def acted_for(self, event: AuditEvent) -> str:
        return event.subject_user

    @admin.display(description="service", ordering="service")
    def service_cell(self, event: AuditEvent) -> str:
        name = getattr(event, "service_name", None)
        if not event.service or not name or name == event.service:
            return event.service  # no service, or one deleted since: its client id
        return format_html(
            '<span title="client id {}">{}</span><br><span class="client-id">{}</span>',
            event.service,
            name,
            event.service,
        )

    @admin.display(description="client address", ordering="client_ip")
    def client_address(self, event: AuditEvent) -> str:
        # An IPv6 address may wrap after a colon rather than widen the list.
        return format_html_join(
            mark_safe(":<wbr>"), "{}", ((p,) for p in (event.client_ip or "").split(":"))
        )

    @admin.display(description="grant", ordering="grant_id")
    def grant_cell(self, event: AuditEvent) -> str:
        if event.grant_id is None:
            return ""
        return format_html('<span title="{}">{}…</span>', event.grant_id, str(event.grant_id)[:8])

    @admin.action(description="Export selected events as CSV", permissions=["view"])
    def export_csv(
        self, request: HttpRequest, queryset: QuerySet[AuditEvent]
    ) -> StreamingHttpResponse:
        response = StreamingHttpResponse(audit_csv_rows(queryset), content_type="text/csv")
        response["Content-Disposition"] = (
            f'attachment; filename="audit-{timezone.now():%Y%m%d-%H%M%S}.csv"'
        )
        return response


# ---------------------------------------------------------------- bulk revocation


class RevocationJobForm(forms.ModelForm):
    by = forms.ChoiceField(
        choices=[
            ("user", "every grant of a user (username)"),
            ("provider", "every grant at a provider app (slug)"),
            ("service", "every grant a service used (client id)"),
            ("all", "every grant"),
        ]
    )
    value = forms.CharField(required=False, help_text="Empty for all.")

    class Meta:
        model = RevocationJob
        fields = ["reason"]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        by = data.get("by")
        criteria: dict[str, Any] = (
            {"all": True} if by == "all" else {str(by): (data.get("value") or "").strip()}
        )
        try:
            data["criteria"] = bulk.validate_criteria(criteria)
        except bulk.CriteriaError as exc:
            raise forms.ValidationError(str(exc)) from None
        return data


@admin.register(RevocationJob)
class RevocationJobAdmin(admin.ModelAdmin):
    list_display = ["created_at", "criteria", "reason", "requested_by", "status", "progress"]
    list_filter = ["status"]
    actions = ["run_again"]
    readonly_fields = [
        "criteria",
        "reason",
        "requested_by",
        "status",
        "total",
        "done",
        "failed",
        "last_error",
        "created_at",
        "started_at",
        "finished_at",
    ]

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any):
        if obj is None:
            kwargs["form"] = RevocationJobForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return ["by", "value", "reason"] if obj is None else self.readonly_fields

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return [] if obj is None else self.readonly_fields

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Jobs are never edited; "change" here means running one again (action).
        return obj is None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="progress")
    def progress(self, job: RevocationJob) -> str:
        failed = f", {job.failed} failed" if job.failed else ""
        return f"{job.done} / {job.total if job.total is not None else '?'} revoked{failed}"

    def save_model(self, request: HttpRequest, obj: RevocationJob, form: Any, change: bool) -> None:
        bulk.create_job(
            form.cleaned_data["criteria"],
            reason=form.cleaned_data["reason"],
            requested_by=actor_name(request),
            job=obj,
        )
        bulk.enqueue_job(obj)

    @admin.action(description="Run selected jobs again (resume)", permissions=["change"])
    def run_again(self, request: HttpRequest, queryset: QuerySet[RevocationJob]) -> None:
        for job in queryset.exclude(status=RevocationJob.Status.DONE):
            bulk.enqueue_job(job)
        self.message_user(request, "Unfinished jobs queued again.")


# ---------------------------------------------------------------- webhook deliveries


class WebhookAttemptInline(admin.TabularInline):
    model = WebhookAttempt
    extra = 0
    can_delete = False
    fields = ("number", "at", "status_code", "error", "duration_ms")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(RecordAdmin):
    list_display = ["created_at", "event", "service", "status", "attempt_count", "last_error"]
    list_filter = ["status", "event", "service"]
    search_fields = ["service__client_id", "grant_id"]
    fields = (
        "id",
        "service",
        "event",
        "grant_id",
        "url",
        "status",
        "attempt_count",
        "last_error",
        "created_at",
        "delivered_at",
        "body",
    )
    readonly_fields = fields
    inlines = [WebhookAttemptInline]
