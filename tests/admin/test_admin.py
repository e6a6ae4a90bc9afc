"""The admin, tried by a superuser, an auditor, a non-staff user and an anonymous visitor.

No page may contain a token or secret: the fixtures store known strings and every page's
HTML is searched for them.
"""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.contrib.auth.models import Group
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone

from accounts.models import AUDITOR_GROUP
from broker.audit import trail
from broker.models import (
    AuditEvent,
    Grant,
    ProviderApp,
    RevocationJob,
    ServiceClient,
    WebhookAttempt,
    WebhookDelivery,
)
from broker.service_identity import service_secrets
from tests.factories import make_app, make_service, save_grant
from tests.sandbox_grants import connect_grant, identity_works, refresh_count

APP_SECRET = "KNOWN-app-secret-5d1e"
ACCESS = "KNOWN-access-token-77ab"
REFRESH = "KNOWN-refresh-token-91fe"
WEBHOOK_SECRET = "bkw_KNOWN-webhook-secret-0c3a"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PRIVATE_PEM = RSA_KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
).decode()
PUBLIC_PEM = (
    RSA_KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)
# A line from the middle of the private key: enough to recognise any rendering of it.
PRIVATE_PEM_LINE = PRIVATE_PEM.splitlines()[5]


def secrets_in(html: str, extra: tuple[str, ...] = ()) -> list[str]:
    known = (APP_SECRET, ACCESS, REFRESH, WEBHOOK_SECRET, PRIVATE_PEM_LINE, *extra)
    found = [s for s in known if s in html]
    if re.search(r"v1:test[12]:", html):  # a sealed column rendered, even as ciphertext
        found.append("ciphertext")
    return found


@pytest.fixture
def superuser(django_user_model):
    return django_user_model.objects.create_superuser("root", "root@example.com", "root-broker")


@pytest.fixture
def auditor(django_user_model):
    user = django_user_model.objects.create_user(
        "audrey", "audrey@example.com", "audrey-broker", is_staff=True
    )
    user.groups.add(Group.objects.get(name=AUDITOR_GROUP))
    return user


@pytest.fixture
def data(owner):
    app = make_app("jira", secret=APP_SECRET)
    rsa_app = ProviderApp(
        slug="jira-dc",
        kind="jira-dc-oauth1",
        name="Jira DC",
        client_id="broker",
        base_url="https://jira.example",
        signature_method="RSA-SHA1",
    )
    rsa_app.seal("private_key", PRIVATE_PEM)
    rsa_app.save()
    service = make_service("reports", webhook_url="https://hooks.example/x", app=app)
    service.seal("webhook_secret", WEBHOOK_SECRET)
    service.save()
    service_secrets.new_secret(service)
    grant = save_grant(owner, app, access=ACCESS, refresh=REFRESH, last_used_by=service)
    trail.record(
        "token.issued",
        actor_type="service",
        actor="reports",
        grant_id=grant.pk,
        subject_user="alice",
        provider="jira",
        service="reports",
    )
    job = RevocationJob.objects.create(
        criteria={"user": "nobody"}, reason="r", requested_by="root", total=0
    )
    delivery = WebhookDelivery.objects.create(
        service=service,
        event="grant.created",
        grant_id=grant.pk,
        url=service.webhook_url,
        body="{}",
    )
    WebhookAttempt.objects.create(delivery=delivery, number=1, status_code=500, error="HTTP 500")
    return {
        "app": app,
        "rsa_app": rsa_app,
        "service": service,
        "grant": grant,
        "event": AuditEvent.objects.get(action="token.issued"),
        "job": job,
        "delivery": delivery,
    }


MODELS = ["providerapp", "grant", "serviceclient", "auditevent", "revocationjob", "webhookdelivery"]
OBJECT_OF = {
    "providerapp": "app",
    "grant": "grant",
    "serviceclient": "service",
    "auditevent": "event",
    "revocationjob": "job",
    "webhookdelivery": "delivery",
}
# Grants: the add page stores an API token (the one kind of grant not made by consent).
ADDABLE = {"providerapp", "grant", "serviceclient", "revocationjob"}


def admin_pages(data) -> list[tuple[str, str, str]]:
    """(kind, model, url) of every admin page of the broker."""
    pages = [("index", "", reverse("admin:index"))]
    pages.append(("app_index", "", reverse("admin:app_list", args=["broker"])))
    for model in MODELS:
        pages.append(("changelist", model, reverse(f"admin:broker_{model}_changelist")))
        obj = data[OBJECT_OF[model]]
        pages.append(("change", model, reverse(f"admin:broker_{model}_change", args=[obj.pk])))
        pages.append(("add", model, reverse(f"admin:broker_{model}_add")))
    pages.append(
        (
            "change",
            "providerapp",
            reverse("admin:broker_providerapp_change", args=[data["rsa_app"].pk]),
        )
    )
    return pages


@pytest.mark.django_db
def test_a_superuser_reads_every_page_and_no_page_shows_a_secret(client, superuser, data):
    client.force_login(superuser)
    for kind, model, url in admin_pages(data):
        response = client.get(url)
        expected = 403 if kind == "add" and model not in ADDABLE else 200
        assert response.status_code == expected, (url, response.status_code)
        assert secrets_in(response.content.decode()) == [], url
    # The RSA consumer's public key is shown, to register at the provider.
    page = client.get(reverse("admin:broker_providerapp_change", args=[data["rsa_app"].pk]))
    assert PUBLIC_PEM.splitlines()[2] in page.content.decode()


@pytest.mark.django_db
def test_an_auditor_reads_every_page_but_can_change_nothing(client, auditor, data):
    client.force_login(auditor)
    for kind, model, url in admin_pages(data):
        response = client.get(url)
        expected = 403 if kind == "add" else 200
        assert response.status_code == expected, (url, response.status_code)
        html = response.content.decode()
        assert secrets_in(html) == [], url
        if kind == "change":
            assert 'name="_save"' not in html, url  # a read-only view
            assert 'name="new_client_secret"' not in html
        if kind == "changelist":
            assert "revoke_selected" not in html and "rotate_secret" not in html


@pytest.mark.django_db
@pytest.mark.parametrize("who", ["non_staff", "anonymous"])
def test_non_staff_and_anonymous_visitors_are_sent_to_sign_in(client, owner, data, who):
    if who == "non_staff":
        client.force_login(owner)
    for _kind, _model, url in admin_pages(data):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/admin/login/"), url
        assert secrets_in(response.content.decode()) == []


def post_action(client, model: str, action: str, pks, **extra):
    return client.post(
        reverse(f"admin:broker_{model}_changelist"),
        {"action": action, "_selected_action": [str(pk) for pk in pks], **extra},
    )


@pytest.mark.django_db(transaction=True)
def test_revoke_action_asks_for_a_reason_then_revokes(client, superuser, data, eager_celery):
    client.force_login(superuser)
    grant = data["grant"]
    first = post_action(client, "grant", "revoke_selected", [grant.pk])
    assert first.status_code == 200 and 'name="reason"' in first.content.decode()
    assert secrets_in(first.content.decode()) == []
    no_reason = post_action(client, "grant", "revoke_selected", [grant.pk], apply="1", reason="")
    assert no_reason.status_code == 200
    grant.refresh_from_db()
    assert grant.status == Grant.Status.ACTIVE and grant.has_secret("access_token")

    done = post_action(
        client, "grant", "revoke_selected", [grant.pk], apply="1", reason="left the company"
    )
    assert done.status_code == 302
    grant.refresh_from_db()
    assert grant.status == Grant.Status.REVOKED and not grant.has_secret("refresh_token")
    event = AuditEvent.objects.get(action="grant.revoked")
    assert (event.actor_type, event.actor, event.detail["reason"]) == (
        "admin",
        "root",
        "left the company",
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    "model,action,key",
    [
        ("grant", "revoke_selected", "grant"),
        ("grant", "refresh_selected", "grant"),
        ("providerapp", "disable_apps", "app"),
        ("serviceclient", "rotate_secret", "service"),
        ("serviceclient", "disable_services", "service"),
        ("serviceclient", "new_webhook_secret", "service"),
        ("revocationjob", "run_again", "job"),
    ],
)
def test_an_auditor_cannot_run_changing_actions(client, auditor, data, model, action, key):
    client.force_login(auditor)
    service_before = ServiceClient.objects.values().get(pk=data["service"].pk)
    response = post_action(
        client, model, action, [data[key].pk], apply="1", reason="x", grace_hours="0"
    )
    assert response.status_code in (200, 302, 403)  # the changelist again, or refused
    assert secrets_in(response.content.decode()) == []
    assert "bks_" not in response.content.decode() and "bkw_" not in response.content.decode()
    data["grant"].refresh_from_db()
    assert data["grant"].status == Grant.Status.ACTIVE
    assert ProviderApp.objects.get(pk=data["app"].pk).enabled
    assert ServiceClient.objects.values().get(pk=data["service"].pk) == service_before
    assert not AuditEvent.objects.filter(actor="audrey").exists()


@pytest.mark.django_db
def test_an_auditor_cannot_post_changes_or_add(client, auditor, data):
    client.force_login(auditor)
    app = data["app"]
    url = reverse("admin:broker_providerapp_change", args=[app.pk])
    response = client.post(
        url, {"slug": "hacked", "name": "x", "kind": "oauth2", "new_client_secret": "s"}
    )
    assert response.status_code == 403
    app.refresh_from_db()
    assert app.slug == "jira" and app.unseal("client_secret") == APP_SECRET
    response = client.post(reverse("admin:broker_revocationjob_add"), {"by": "all", "reason": "x"})
    assert response.status_code == 403
    assert RevocationJob.objects.count() == 1


@pytest.mark.django_db
def test_the_audit_log_cannot_be_changed_even_by_a_superuser(client, superuser, data):
    client.force_login(superuser)
    event = data["event"]
    change = reverse("admin:broker_auditevent_change", args=[event.pk])
    assert client.post(change, {"action": "x"}).status_code == 403
    assert client.get(reverse("admin:broker_auditevent_delete", args=[event.pk])).status_code == 403
    assert (
        client.post(
            reverse("admin:broker_auditevent_delete", args=[event.pk]), {"post": "yes"}
        ).status_code
        == 403
    )
    response = post_action(client, "auditevent", "delete_selected", [event.pk], post="yes")
    assert AuditEvent.objects.filter(pk=event.pk).exists()
    assert response.status_code in (200, 302)


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["superuser", "auditor"])
def test_the_audit_log_exports_as_csv(client, data, role, request):
    client.force_login(request.getfixturevalue(role))
    trail.record(
        "token.issued", actor_type="service", actor="=cmd|' /C calc'!A0", subject_user="bob"
    )
    response = post_action(
        client, "auditevent", "export_csv", AuditEvent.objects.values_list("pk", flat=True)
    )
    assert response.status_code == 200 and response["Content-Type"] == "text/csv"
    text = b"".join(response.streaming_content).decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert {r["subject_user"] for r in rows} >= {"alice", "bob"}
    assert any(r["actor"] == "'=cmd|' /C calc'!A0" for r in rows)  # no formula injection
    assert secrets_in(text) == []


@pytest.mark.django_db
def test_who_read_alices_jira_token_last_week_is_one_filtered_url(client, auditor, data):
    client.force_login(auditor)
    trail.record(
        "token.issued",
        actor_type="service",
        actor="other",
        subject_user="bob",
        provider="jira",
        service="other",
    )
    url = reverse("admin:broker_auditevent_changelist")
    response = client.get(
        url,
        {
            "subject_user": "alice",
            "action": "token.issued",
            "provider": "jira",
            "at__gte": "2000-01-01",
        },
    )
    assert response.status_code == 200
    shown = list(response.context["cl"].result_list)
    assert [(e.subject_user, e.service) for e in shown] == [("alice", "reports")]


@pytest.mark.django_db
def test_adding_a_service_shows_its_secret_once_and_stores_only_a_digest(client, superuser, data):
    client.force_login(superuser)
    response = client.post(
        reverse("admin:broker_serviceclient_add"),
        {
            "client_id": "billing",
            "name": "Billing",
            "enabled": "on",
            "webhook_url": "https://hooks.example/billing",
            "rules-TOTAL_FORMS": "1",
            "rules-INITIAL_FORMS": "0",
            "rules-0-provider_app": str(data["app"].pk),
            "rules-0-scopes": "[]",
            "keys-TOTAL_FORMS": "0",
            "keys-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 200, response.content.decode()[:2000]
    assert "no-store" in response["Cache-Control"]
    html = response.content.decode()
    secret = re.search(r'data-secret="client secret">(bks_[^<]+)<', html).group(1)
    webhook = re.search(r'data-secret="webhook secret">(bkw_[^<]+)<', html).group(1)
    service = ServiceClient.objects.get(client_id="billing")
    assert service.rules.count() == 1
    assert service_secrets.matched_secret(service, secret) is not None
    assert service_secrets.matched_secret(service, secret + "x") is None
    assert service.unseal("webhook_secret") == webhook
    assert secret not in str(ServiceClient.objects.filter(pk=service.pk).values().get())
    page = client.get(reverse("admin:broker_serviceclient_change", args=[service.pk]))
    assert secret not in page.content.decode() and webhook not in page.content.decode()
    assert secret[-4:] in page.content.decode()  # the last four, for recognition


@pytest.mark.django_db
def test_rotating_a_secret_keeps_the_old_one_for_the_grace_period(client, superuser, data):
    client.force_login(superuser)
    service = data["service"]
    old = service_secrets.new_secret(service)
    response = post_action(
        client, "serviceclient", "rotate_secret", [service.pk], apply="1", grace_hours="24"
    )
    assert response.status_code == 200
    new = re.search(r'data-secret="client secret">(bks_[^<]+)<', response.content.decode()).group(1)
    service.refresh_from_db()
    assert new != old
    assert service_secrets.matched_secret(service, new) is not None
    assert service_secrets.matched_secret(service, old) is not None
    service.previous_secret_valid_until = service.previous_secret_valid_until.replace(year=2000)
    assert service_secrets.matched_secret(service, old) is None


@pytest.mark.django_db
def test_provider_app_secrets_are_write_only(client, superuser, data):
    client.force_login(superuser)
    app = data["rsa_app"]
    url = reverse("admin:broker_providerapp_change", args=[app.pk])
    form = {
        "slug": app.slug,
        "name": app.name,
        "kind": app.kind,
        "enabled": "on",
        "client_id": app.client_id,
        "signature_method": "RSA-SHA1",
        "base_url": app.base_url,
        "endpoints": "{}",
        "scopes": "[]",
    }
    typed_secret = "typed-consumer-secret-4455"
    bad = client.post(
        url, {**form, "new_client_secret": typed_secret, "new_private_key": "junk-key-6677"}
    )
    assert bad.status_code == 200  # the invalid key is refused and the form shown again
    assert "junk-key-6677" not in bad.content.decode()
    assert typed_secret not in bad.content.decode()
    app.refresh_from_db()
    assert app.unseal("private_key") == PRIVATE_PEM and not app.has_secret("client_secret")

    good = client.post(url, {**form, "new_client_secret": typed_secret})
    assert good.status_code == 302
    app.refresh_from_db()
    assert app.unseal("client_secret") == typed_secret
    assert app.unseal("private_key") == PRIVATE_PEM  # empty input keeps the stored key
    page = client.get(url).content.decode()
    assert typed_secret not in page and secrets_in(page) == []
    change = AuditEvent.objects.get(action="admin.change", detail__object_id=str(app.pk))
    assert typed_secret not in str(change.detail)


@pytest.mark.django_db(transaction=True)
def test_a_bulk_revocation_is_started_from_the_admin(client, superuser, data, eager_celery):
    client.force_login(superuser)
    response = client.post(
        reverse("admin:broker_revocationjob_add"),
        {"by": "user", "value": "alice", "reason": "offboarding"},
    )
    assert response.status_code == 302
    job = RevocationJob.objects.get(reason="offboarding")
    assert (job.status, job.total, job.done, job.requested_by) == ("done", 1, 1, "root")
    assert Grant.objects.get(pk=data["grant"].pk).status == Grant.Status.REVOKED
    listing = client.get(reverse("admin:broker_revocationjob_changelist")).content.decode()
    assert "1 / 1 revoked" in listing
    unknown = client.post(
        reverse("admin:broker_revocationjob_add"),
        {"by": "user", "value": "nobody-x", "reason": "x"},
    )
    assert unknown.status_code == 200 and not RevocationJob.objects.filter(reason="x").exists()


@pytest.mark.django_db
def test_a_key_added_in_the_admin_is_named_by_its_thumbprint(client, superuser, data):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from broker.models import ServiceKey
    from broker.service_identity.service_keys import thumbprint

    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    client.force_login(superuser)
    service = data["service"]
    response = client.post(
        reverse("admin:broker_serviceclient_change", args=[service.pk]),
        {
            "client_id": service.client_id,
            "name": service.name,
            "enabled": "on",
            "webhook_url": "",
            "rules-TOTAL_FORMS": "0",
            "rules-INITIAL_FORMS": "0",
            "keys-TOTAL_FORMS": "2",
            "keys-INITIAL_FORMS": "0",
            "keys-0-public_key_pem": pem,
            "keys-0-enabled": "on",
            "keys-1-public_key_pem": "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----",
        },
    )
    assert response.status_code == 200  # the private key is refused, so nothing is saved
    assert "register the public key only" in response.content.decode()
    assert not ServiceKey.objects.filter(service=service).exists()
    accepted = client.post(
        reverse("admin:broker_serviceclient_change", args=[service.pk]),
        {
            "client_id": service.client_id,
            "name": service.name,
            "enabled": "on",
            "webhook_url": "",
            "rules-TOTAL_FORMS": "0",
            "rules-INITIAL_FORMS": "0",
            "keys-TOTAL_FORMS": "1",
            "keys-INITIAL_FORMS": "0",
            "keys-0-public_key_pem": pem,
            "keys-0-enabled": "on",
        },
    )
    assert accepted.status_code == 302, accepted.content.decode()[:2000]
    key = ServiceKey.objects.get(service=service)
    assert key.kid == thumbprint(pem)


@pytest.mark.sandbox
@pytest.mark.django_db(transaction=True)
def test_refresh_now_really_refreshes_grants_that_are_not_due(
    client, superuser, sandbox, sandbox_apps, owner, eager_celery
):
    """Through the real task and refresh engine against the sandbox, run in-process."""
    grant = connect_grant(sandbox, owner)
    dead = connect_grant(sandbox, owner, username="bob")
    Grant.objects.filter(pk=dead.pk).update(status=Grant.Status.RECONNECT_REQUIRED)
    Grant.objects.filter(pk=grant.pk).update(next_refresh_at=timezone.now() + timedelta(hours=1))
    before = refresh_count(sandbox)
    client.force_login(superuser)
    response = post_action(client, "grant", "refresh_selected", [grant.pk, dead.pk])
    assert response.status_code == 302
    assert refresh_count(sandbox) == before + 1  # the dead grant is left alone
    refreshed = Grant.objects.get(pk=grant.pk)
    assert refreshed.token_version == grant.token_version + 1
    assert refreshed.unseal("access_token") != grant.unseal("access_token")
    assert refreshed.refresh_enqueued_at is None and refreshed.last_refreshed_at
    assert identity_works(sandbox, refreshed.unseal("access_token"))
    [event] = AuditEvent.objects.filter(action="grant.refresh_requested")
    assert (event.actor_type, event.grant_id) == ("admin", grant.pk)


@pytest.mark.django_db
def test_the_admin_refuses_a_provider_app_the_providers_file_refuses(client, superuser, tmp_path):
    """One set of rules: a Data Center app without its base URL has no endpoints to call."""
    providers = tmp_path / "providers.toml"
    providers.write_text(
        '[apps.jira-acme]\nkind = "jira-dc-oauth2"\nname = "Jira"\n'
        'client_id = "abc"\nclient_secret = "s3cret"\n'
    )
    with pytest.raises(CommandError, match="field 'base_url' is required"):
        call_command("loadproviders", str(providers), stdout=io.StringIO())

    client.force_login(superuser)
    form = {
        "slug": "jira-acme",
        "name": "Jira",
        "kind": "jira-dc-oauth2",
        "enabled": "on",
        "client_id": "abc",
        "signature_method": "",
        "base_url": "",
        "endpoints": "{}",
        "scopes": "[]",
        "new_client_secret": "s3cret",
    }
    refused = client.post(reverse("admin:broker_providerapp_add"), form)
    assert refused.status_code == 200
    assert "field &#x27;base_url&#x27; is required" in refused.content.decode()
    assert not ProviderApp.objects.filter(slug="jira-acme").exists()

    saved = client.post(
        reverse("admin:broker_providerapp_add"), {**form, "base_url": "https://jira.acme.example"}
    )
    assert saved.status_code == 302
    assert ProviderApp.objects.get(slug="jira-acme").base_url == "https://jira.acme.example"
