"""Password sign-in, which BROKER_PASSWORD_LOGIN=0 turns off on every web form (the
sign-in page and the admin's); `manage.py` stays open to superusers for break-glass."""

from typing import Any

from django.conf import settings
from django.contrib.auth.backends import ModelBackend
from django.http import HttpRequest

from accounts.models import User


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
