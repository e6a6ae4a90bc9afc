"""Apps of the atlassian-api-token kind in the providers file: a site URL and nothing else
(no client: each grant holds its owner's own token)."""

from __future__ import annotations

import pytest
from django.core.management import CommandError

from broker.models import ProviderApp
from tests.providers.test_providers_file import load

pytestmark = pytest.mark.django_db

APP = """
[apps.acme-site]
kind = "atlassian-api-token"
name = "Acme Jira (API token)"
base_url = "https://acme.atlassian.net/"
"""


def test_an_api_token_app_needs_only_its_site(tmp_path):
    path = tmp_path / "providers.toml"
    path.write_text(APP)
    assert load(path) == {"acme-site": "created"}
    app = ProviderApp.objects.get(slug="acme-site")
    assert app.protocol == "api_token"
    assert app.endpoint("api") == "https://acme.atlassian.net"
    assert app.endpoint("identity") == "https://acme.atlassian.net/rest/api/3/myself"


@pytest.mark.parametrize(
    "extra, problem",
    [
        ('client_secret = "x"', "does not apply"),
        ('consumer_key = "x"', "does not apply"),
        ("", "base_url"),
    ],
    ids=["client-secret", "consumer-key", "no-site"],
)
def test_client_fields_or_a_missing_site_are_refused(tmp_path, extra, problem):
    path = tmp_path / "providers.toml"
    text = (
        APP + extra + "\n" if extra else APP.replace('base_url = "https://acme.atlassian.net/"', "")
    )
    path.write_text(text)
    with pytest.raises(CommandError, match=problem):
        load(path)
    assert not ProviderApp.objects.exists()
