"""Issue 25 item 5: the broker's own client id at the IdP (BROKER_OIDC_CLIENT_ID) is never
a service's subject audience. The ID tokens issued to it are users' sign-in tokens; a
service registered for it could exchange any of them for the user's provider tokens. Every
way to register audiences refuses it, with a clear error and nothing written."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.urls import reverse

from broker.models import ServiceClient
from tests.factories import service_and_secret

pytestmark = pytest.mark.django_db

OWN = "broker-sso"


@pytest.fixture(autouse=True)
def single_sign_on(settings):
    settings.BROKER_OIDC_ISSUER = "https://idp.example"
    settings.BROKER_OIDC_CLIENT_ID = OWN


@pytest.mark.parametrize("audiences", [[OWN], ["assistant-web", OWN]])
def test_createserviceclient_refuses_the_brokers_own_client_id(audiences):
    args = [arg for audience in audiences for arg in ("--subject-audience", audience)]
    with pytest.raises(CommandError, match="broker's own sign-in client") as refused:
        call_command("createserviceclient", "Assistant", *args, "--json", stdout=StringIO())
    assert "--subject-audience" in str(refused.value)
    assert not ServiceClient.objects.exists()


def test_createserviceclient_registers_the_services_own_audience():
    call_command(
        "createserviceclient", "Assistant", "--subject-audience", "assistant-web", stdout=StringIO()
    )
    assert ServiceClient.objects.get().subject_audiences == ["assistant-web"]


def test_saving_a_service_with_the_brokers_own_client_id_is_refused():
    with pytest.raises(ValidationError, match="broker's own sign-in client"):
        ServiceClient(client_id="assistant", name="Assistant", subject_audiences=[OWN]).save()
    assert not ServiceClient.objects.exists()

    service, _ = service_and_secret("assistant")
    service.subject_audiences = ["assistant-web", OWN]
    with pytest.raises(ValidationError):
        service.save()
    service.refresh_from_db()
    assert service.subject_audiences == []
    # A row written before the refusal existed still lets other fields be saved (disabling).
    ServiceClient.objects.filter(pk=service.pk).update(subject_audiences=[OWN])
    service.refresh_from_db()
    service.enabled = False
    service.save(update_fields=["enabled", "updated_at"])
    assert not ServiceClient.objects.get(pk=service.pk).enabled


def service_form(**fields: str) -> dict[str, str]:
    return {
        "client_id": "assistant",
        "name": "Assistant",
        "enabled": "on",
        "webhook_url": "",
        "subject_audiences": "[]",
        "rules-TOTAL_FORMS": "0",
        "rules-INITIAL_FORMS": "0",
        "keys-TOTAL_FORMS": "0",
        "keys-INITIAL_FORMS": "0",
        **fields,
    }


def test_the_admin_refuses_the_brokers_own_client_id_and_writes_nothing(client, django_user_model):
    admin = django_user_model.objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(admin)
    added = client.post(
        reverse("admin:broker_serviceclient_add"),
        service_form(subject_audiences=f'["{OWN}"]'),
    )
    assert added.status_code == 200
    assert "broker&#x27;s own sign-in client" in added.content.decode()
    assert not ServiceClient.objects.exists()

    service, _ = service_and_secret("assistant")
    changed = client.post(
        reverse("admin:broker_serviceclient_change", args=[service.pk]),
        service_form(client_id=service.client_id, subject_audiences=f'["chat", "{OWN}"]'),
    )
    assert changed.status_code == 200
    assert "broker&#x27;s own sign-in client" in changed.content.decode()
    service.refresh_from_db()
    assert service.subject_audiences == []
