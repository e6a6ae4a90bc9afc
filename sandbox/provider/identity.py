"""How the sandbox's demo users look in Atlassian's and Jira's APIs."""

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser

# Fixed ids so the broker sees stable cloud ids across sandbox restarts.
SITES = [
    {
        "id": "6f1c2a0e-5b7d-4c1e-9a4f-0d3e8b7a1c01",
        "name": "Acme Jira",
        "slug": "acme",
    },
    {
        "id": "a2d94b3f-8e61-4f0a-b5c7-1e9d2c4f6a02",
        "name": "Globex Confluence",
        "slug": "globex",
    },
]


def avatar_url() -> str:
    return f"{settings.SANDBOX_PUBLIC_URL}/avatar.png"


def display_name(user: AbstractBaseUser) -> str:
    return user.get_full_name() or user.get_username()


def email(user: AbstractBaseUser) -> str:
    return f"{user.get_username()}@sandbox.example"


def atlassian_me(user: AbstractBaseUser) -> dict:
    """The shape of `GET https://api.atlassian.com/me`."""
    username = user.get_username()
    return {
        "account_id": f"sandbox-{username}",
        "email": email(user),
        "name": display_name(user),
        "nickname": username,
        "picture": avatar_url(),
        "account_type": "atlassian",
        "account_status": "active",
    }


def accessible_resources(scopes: list[str]) -> list[dict]:
    """The shape of `GET https://api.atlassian.com/oauth/token/accessible-resources`."""
    return [
        {
            "id": site["id"],
            "name": site["name"],
            "url": f"{settings.SANDBOX_PUBLIC_URL}/sites/{site['slug']}",
            "scopes": scopes,
            "avatarUrl": avatar_url(),
        }
        for site in SITES
    ]


def jira_myself(user: AbstractBaseUser) -> dict:
    """The shape of Jira Data Center's `GET /rest/api/2/myself`."""
    return {
        "name": user.get_username(),
        "key": f"JIRAUSER{user.pk}",
        "displayName": display_name(user),
        "emailAddress": email(user),
        "active": True,
        "timeZone": "UTC",
    }
