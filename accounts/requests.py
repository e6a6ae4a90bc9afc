"""A request type for views behind `login_required`, so type checks know who is signed in."""

from django.http import HttpRequest

from accounts.models import User


class AuthenticatedRequest(HttpRequest):
    user: User
