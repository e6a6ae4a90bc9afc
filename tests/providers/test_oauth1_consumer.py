"""The broker's OAuth 1.0a consumer identity: the public key an admin pastes into Jira, where
users revoke, and where a finished consent may send the browser."""

import json
from io import StringIO

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from django.core.management import call_command

from broker.models import ProviderApp
from broker.providers.oauth1_consumer import ConsumerMisconfigured, public_key_pem

pytestmark = pytest.mark.django_db

PROVIDERS = """
[apps.jira-acme]
kind = "jira-dc-oauth1"
name = "Jira (Acme)"
base_url = "https://jira.acme.example"
consumer_key = "broker"
private_key = "file:acme.pem"

[apps.jira-hmac]
kind = "jira-dc-oauth1"
name = "Jira (HMAC)"
base_url = "https://jira.hmac.example"
consumer_key = "broker-hmac"
consumer_secret = "a-consumer-secret"
signature_method = "HMAC-SHA1"

[apps.cloud]
kind = "atlassian"
client_id = "abc"
client_secret = "def"
"""


@pytest.fixture
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def providers(tmp_path, key):
    (tmp_path / "acme.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    path = tmp_path / "providers.toml"
    path.write_text(PROVIDERS)
    return path


def test_the_public_key_matches_the_apps_private_key(providers, key):
    call_command("loadproviders", str(providers), stdout=StringIO())
    pem = public_key_pem(ProviderApp.objects.get(slug="jira-acme"))
    assert pem and pem.startswith("-----BEGIN PUBLIC KEY-----")
    public = serialization.load_pem_public_key(pem.encode())
    signature = key.sign(b"base string", padding.PKCS1v15(), hashes.SHA1())
    public.verify(signature, b"base string", padding.PKCS1v15(), hashes.SHA1())  # no raise
    assert public_key_pem(ProviderApp.objects.get(slug="jira-hmac")) is None
    assert public_key_pem(ProviderApp.objects.get(slug="cloud")) is None


def test_a_broken_private_key_is_reported_without_its_value():
    app = ProviderApp(slug="broken", kind="jira-dc-oauth1", name="b", client_id="k")
    app.seal("private_key", "-----BEGIN PRIVATE KEY-----\nnot-a-key\n-----END PRIVATE KEY-----")
    with pytest.raises(ConsumerMisconfigured) as raised:
        public_key_pem(app)
    assert "not-a-key" not in str(raised.value)


def test_loadproviders_prints_the_public_key_for_rsa_apps(providers):
    out = StringIO()
    call_command("loadproviders", str(providers), stdout=out)
    text = out.getvalue()
    assert "jira-acme: created" in text
    assert "jira-acme: public key for the application link (RSA-SHA1):" in text
    assert text.count("BEGIN PUBLIC KEY") == 1
    assert "PRIVATE" not in text and "a-consumer-secret" not in text


def test_loadproviders_json_adds_public_key_only_to_rsa_apps(providers):
    out = StringIO()
    call_command("loadproviders", str(providers), "--json", stdout=out)
    apps = {app["slug"]: app for app in json.loads(out.getvalue())["apps"]}
    assert set(apps["jira-acme"]) == {"slug", "result", "public_key"}
    assert apps["jira-acme"]["public_key"].startswith("-----BEGIN PUBLIC KEY-----")
    assert apps["jira-hmac"] == {"slug": "jira-hmac", "result": "created"}
    assert apps["cloud"] == {"slug": "cloud", "result": "created"}
