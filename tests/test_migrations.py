"""Data migrations, run forward on rows made with the models of the migration before."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = [("broker", "0002_revocation_jobs_webhooks_auditor")]
AFTER = [("broker", "0003_grant_redirect_uri_expiry_warning")]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


def latest():
    return MigrationExecutor(connection).loader.graph.leaf_nodes()


def test_existing_oauth2_grants_keep_the_redirect_uri_of_the_url_they_consented_under(settings):
    settings.BROKER_PUBLIC_URL = "https://broker.example"
    try:
        old = migrate(BEFORE)
        user = old.get_model("accounts", "User").objects.create(username="alice")
        App, Grant = old.get_model("broker", "ProviderApp"), old.get_model("broker", "Grant")
        for slug, kind in (("jira-dc", "jira-dc-oauth2"), ("jira-old", "jira-dc-oauth1")):
            app = App.objects.create(slug=slug, kind=kind, name=slug)
            Grant.objects.create(user=user, provider_app=app, external_account_id="a")

        new = migrate(AFTER)
        redirect_uris = dict(
            new.get_model("broker", "Grant").objects.values_list(
                "provider_app__slug", "redirect_uri"
            )
        )
    finally:
        migrate(latest())
    assert redirect_uris == {
        "jira-dc": "https://broker.example/oauth/callback/jira-dc",
        "jira-old": "",  # OAuth 1.0a has no redirect URI to repeat
    }
