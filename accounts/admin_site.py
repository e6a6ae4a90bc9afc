"""The admin site: Django's, whose sign-in page offers single sign-on too, so that an admin
who signs in at the company IdP gets in from /admin/login/; with BROKER_PASSWORD_LOGIN=0 it
shows no password form and refuses password posts, as the broker's own sign-in page does."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponse

from accounts.password_login import password_login_refused, sign_in_choices


class BrokerAdminSite(admin.AdminSite):
    def login(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if request.method == "POST" and not settings.BROKER_PASSWORD_LOGIN:
            return password_login_refused(request)
        return super().login(request, {**sign_in_choices(), **(extra_context or {})})
