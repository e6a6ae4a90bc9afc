"""createserviceclient, addaccessrule, disableserviceclient (DESIGN.md contracts)."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from broker.models import AccessRule, ServiceClient
from broker.service_identity import service_secrets
from tests.api.conftest import fetch_token

pytestmark = pytest.mark.django_db


def run(*args: str) -> dict:
    out = StringIO()
    call_command(*args, "--json", stdout=out)
    return json.loads(out.getvalue())


def test_createserviceclient_prints_the_secret_once_and_keeps_a_digest(api):
    result = run("createserviceclient", "Reporting service")
    assert result["client_id"].startswith("reporting-service-")
    service = ServiceClient.objects.get(client_id=result["client_id"])
    assert result["client_secret"].startswith("bks_")
    assert result["client_secret"] not in json.dumps(
        list(ServiceClient.objects.values().filter(pk=service.pk)), default=str
    )
    assert service_secrets.matched_secret(service, result["client_secret"]) is not None
    fetch_token(api, service, result["client_secret"])


def test_createserviceclient_plain_output_names_the_secret():
    out = StringIO()
    call_command("createserviceclient", "Billing", stdout=out)
    assert "client_secret: bks_" in out.getvalue() and "client_id: billing-" in out.getvalue()


def test_addaccessrule_defaults_to_the_apps_scopes_and_all_users(atlassian):
    client_id = run("createserviceclient", "Reports")["client_id"]
    result = run("addaccessrule", client_id, "--provider", "atlassian")
    assert result["scopes"] == atlassian.scopes and result["users"] == "all"
    rule = AccessRule.objects.get()
    assert rule.scopes == [] and rule.users_group is None and not rule.can_sign


def test_addaccessrule_with_scopes_group_and_capabilities(atlassian, group):
    client_id = run("createserviceclient", "Reports")["client_id"]
    run(
        "addaccessrule",
        client_id,
        "--provider",
        "atlassian",
        "--scopes",
        "read:me read:jira-work",
        "--users",
        "group:engineering",
        "--sign",
        "--connect-links",
    )
    rule = AccessRule.objects.get()
    assert rule.scopes == ["read:me", "read:jira-work"] and rule.users_group == group
    assert rule.can_sign and rule.can_create_connect_links


@pytest.mark.parametrize(
    "args",
    [
        ("--provider", "nope"),
        ("--provider", "atlassian", "--users", "group:nobody"),
        ("--provider", "atlassian", "--users", "everyone"),
        ("--provider", "atlassian", "--scopes", "admin:everything"),
    ],
)
def test_addaccessrule_refuses_bad_input_and_writes_nothing(atlassian, args):
    client_id = run("createserviceclient", "Reports")["client_id"]
    with pytest.raises(CommandError):
        call_command("addaccessrule", client_id, *args)
    assert not AccessRule.objects.exists()


def test_addaccessrule_with_an_unknown_slug_lists_the_valid_ones(atlassian, other_app):
    client_id = run("createserviceclient", "Reports")["client_id"]
    with pytest.raises(CommandError) as refused:
        call_command("addaccessrule", client_id, "--provider", "jira")
    assert str(refused.value) == "no provider app 'jira'; the apps are: atlassian, gitlab"
    assert not AccessRule.objects.exists()


def test_addaccessrule_without_any_app_says_how_to_load_them():
    client_id = run("createserviceclient", "Reports")["client_id"]
    with pytest.raises(CommandError, match=r"none is loaded \(manage.py loadproviders\)"):
        call_command("addaccessrule", client_id, "--provider", "jira")


def test_disableserviceclient_stops_new_tokens(api):
    result = run("createserviceclient", "Reports")
    service = ServiceClient.objects.get(client_id=result["client_id"])
    assert run("disableserviceclient", service.client_id) == {
        "client_id": service.client_id,
        "enabled": False,
    }
    service.refresh_from_db()
    assert not service.enabled and service.credentials_generation == 2
    with pytest.raises(AssertionError):
        fetch_token(api, service, result["client_secret"])
