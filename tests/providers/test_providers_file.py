"""`manage.py loadproviders`: idempotent, all-or-nothing, and precise about mistakes."""

import json
from io import StringIO

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.core.management import CommandError, call_command

from broker.models import ProviderApp

pytestmark = pytest.mark.django_db

GOOD = """
[apps.atlassian]
kind = "atlassian"
name = "Atlassian"
client_id = "abc"
client_secret = "env:TEST_ATLASSIAN_SECRET"
scopes = ["read:me", "read:jira-work", "offline_access"]

[apps.jira-acme]
kind = "jira-dc-oauth1"
name = "Jira (Acme)"
base_url = "https://jira.acme.example"
consumer_key = "broker"
private_key = "file:acme.pem"
signature_method = "RSA-SHA1"
"""


@pytest.fixture
def providers(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_ATLASSIAN_SECRET", "s3cret-from-env")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "acme.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path = tmp_path / "providers.toml"
    path.write_text(GOOD)
    return path


def load(path):
    out = StringIO()
    call_command("loadproviders", str(path), "--json", stdout=out)
    return {a["slug"]: a["result"] for a in json.loads(out.getvalue())["apps"]}


def test_it_creates_then_leaves_unchanged(providers):
    assert load(providers) == {"atlassian": "created", "jira-acme": "created"}
    assert load(providers) == {"atlassian": "unchanged", "jira-acme": "unchanged"}
    app = ProviderApp.objects.get(slug="atlassian")
    assert app.unseal("client_secret") == "s3cret-from-env"
    assert "s3cret" not in app.client_secret_sealed
    assert app.endpoint("token") == "https://auth.atlassian.com/oauth/token"
    jira = ProviderApp.objects.get(slug="jira-acme")
    assert jira.endpoint("request_token") == (
        "https://jira.acme.example/plugins/servlet/oauth/request-token"
    )
    assert "PRIVATE KEY" in (jira.unseal("private_key") or "")


def test_it_updates_in_place(providers):
    load(providers)
    providers.write_text(GOOD.replace('name = "Atlassian"', 'name = "Atlassian Cloud"'))
    assert load(providers)["atlassian"] == "updated"
    assert ProviderApp.objects.get(slug="atlassian").name == "Atlassian Cloud"
    assert ProviderApp.objects.count() == 2


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        (('kind = "atlassian"', 'kind = "nope"'), "app 'atlassian': field 'kind' must be one of"),
        (("env:TEST_ATLASSIAN_SECRET", "env:MISSING_VAR_X"), "MISSING_VAR_X is not set"),
        (("file:acme.pem", "file:missing.pem"), "field 'private_key': cannot read"),
        (('base_url = "https://jira.acme.example"\n', ""), "field 'base_url' is required"),
        (('client_id = "abc"', 'client_id = "abc"\ncolour = "red"'), "unknown field(s): colour"),
        (
            ('scopes = ["read:me", "read:jira-work", "offline_access"]', "scopes = 3"),
            "'scopes' must be",
        ),
        (('signature_method = "RSA-SHA1"', 'signature_method = "PLAINTEXT"'), "signature_method"),
        (
            ("[apps.atlassian]", '[apps.atlassian]\nendpoints = {token = "ftp://x"}'),
            "endpoints.token",
        ),
        (("[apps.atlassian]", "[apps.atlassian"), "not valid TOML"),
    ],
)
def test_bad_input_is_named_and_nothing_is_applied(providers, mutation, message):
    load(providers)
    before = list(ProviderApp.objects.values_list("slug", "name", "updated_at"))
    providers.write_text(GOOD.replace(*mutation).replace('name = "Atlassian"', 'name = "Changed"'))
    with pytest.raises(CommandError) as error:
        load(providers)
    assert message in str(error.value)
    assert str(providers) in str(error.value)
    assert list(ProviderApp.objects.values_list("slug", "name", "updated_at")) == before


def test_it_reads_the_file_named_by_the_setting(providers, settings):
    settings.BROKER_PROVIDERS_FILE = str(providers)
    out = StringIO()
    call_command("loadproviders", "--json", stdout=out)
    assert {a["slug"] for a in json.loads(out.getvalue())["apps"]} == {"atlassian", "jira-acme"}
    settings.BROKER_PROVIDERS_FILE = ""
    with pytest.raises(CommandError, match="BROKER_PROVIDERS_FILE"):
        call_command("loadproviders")
