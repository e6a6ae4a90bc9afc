"""Password sign-in, which BROKER_PASSWORD_LOGIN=0 turns off on every web form (the
sign-in page and the admin's); `manage.py` stays open to superusers for break-glass."""

from typing import Any

from django.conf import settings
from django.contrib.auth.backends import ModelBackend
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from accounts import oidc_client
from accounts.models import User


def sign_in_choices() -> dict[str, Any]:
    """What a sign-in page (the broker's, the admin's) offers: the single sign-on button
    (its name; empty without an IdP) and the password form (off with BROKER_PASSWORD_LOGIN=0)."""
    return {
        "password_login": settings.BROKER_PASSWORD_LOGIN,
        "sso_name": settings.BROKER_OIDC_NAME if oidc_client.enabled() else "",
    }


def password_login_refused(request: HttpRequest) -> HttpResponse:
    """The answer to a password post on any sign-in form when BROKER_PASSWORD_LOGIN=0."""
    context = {
        "title": "Password sign-in is off",
        "message": "Sign in with single sign-on instead.",
    }
    return render(request, "accounts/sso_refused.html", context, status=403)


class PasswordBackend(ModelBackend):
    """Django's own backend; it also keeps single sign-on sessions (accounts.views.login)."""

    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> User | None:
        if not settings.BROKER_PASSWORD_LOGIN:
            return None
        user = super().authenticate(request, username=username, password=password, **kwargs)
        return user if isinstance(user, User) else None
