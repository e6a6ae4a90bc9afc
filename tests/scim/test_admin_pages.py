"""The admin shows SCIM connections (last four characters, never the token; switched off,
never added there) and, on a user's page, the SCIM resource they were provisioned as."""

from __future__ import annotations

import pytest
from django.test import Client

from accounts.models import ScimConnection, User

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(django_user_model) -> Client:
    client = Client()
    client.force_login(django_user_model.objects.create_superuser("root", "r@example.com", "pw"))
    return client


def test_the_admin_shows_a_connection_without_its_token_and_cannot_add_one(okta, admin_client):
    connection = ScimConnection.objects.get(name="okta")
    page = admin_client.get(f"/admin/accounts/scimconnection/{connection.pk}/change/")
    assert page.status_code == 200
    text = page.content.decode()
    assert connection.token_last4 in text and okta.token not in text
    assert connection.token_digest not in text
    assert admin_client.get("/admin/accounts/scimconnection/add/").status_code == 403


def test_a_user_page_shows_the_scim_resource(okta, admin_client):
    scim_id = okta.post(
        "/Users",
        {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "pat",
         "externalId": "00upat"},
    ).json()["id"]  # fmt: skip
    user = User.objects.get(username="pat")
    page = admin_client.get(f"/admin/accounts/user/{user.pk}/change/")
    assert page.status_code == 200 and scim_id in page.content.decode()
