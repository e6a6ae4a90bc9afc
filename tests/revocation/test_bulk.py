"""Bulk revocation: 1,000 grants, upstream calls, interruption and resumption, the command."""

from __future__ import annotations

import json
from urllib.parse import parse_qs

import pytest
from django.core.management import call_command

from broker.audit import trail
from broker.models import AuditEvent, Grant, RevocationJob
from broker.revocation.bulk import BATCH_SIZE, create_job, run_job
from tests.factories import make_app, make_grant, make_service, save_grant


def sealed_values() -> list[str]:
    rows = Grant.objects.values_list(
        "access_token_sealed", "refresh_token_sealed", "token_secret_sealed"
    )
    return [v for row in rows for v in row if v]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_thousand_grants_are_revoked_and_an_interrupted_job_resumes(
    owner, local_server, eager_celery
):
    revocable = make_app("revocable", revoke_url=f"{local_server.url}/oauth/revoke")
    plain = make_app("plain")
    grants = [make_grant(owner, revocable, n) for n in range(800)]
    grants += [make_grant(owner, plain, n) for n in range(200)]
    Grant.objects.bulk_create(grants, batch_size=500)
    assert len(sealed_values()) == 2000

    job = create_job({"all": True}, reason="incident 7", requested_by="root")
    assert job.total == 1000

    # A worker killed after three batches: part done, the job still "running".
    partial = run_job(job.pk, max_batches=3)
    assert partial is not None
    assert (partial.status, partial.done) == ("running", 3 * BATCH_SIZE)
    assert Grant.objects.filter(status="revoked").count() == 3 * BATCH_SIZE
    calls_before = len(local_server.requests)
    assert 0 < calls_before < 800

    finished = run_job(job.pk)  # the job run again finishes it
    assert finished is not None
    assert (finished.status, finished.total, finished.done, finished.failed) == (
        "done",
        1000,
        1000,
        0,
    )
    assert Grant.objects.exclude(status="revoked").count() == 0
    assert sealed_values() == []  # no ciphertext left anywhere
    # Upstream: exactly one RFC 7009 call per revocable grant, none twice.
    tokens = [parse_qs(r.body.decode())["token"][0] for r in local_server.requests]
    assert len(tokens) == 800 and len(set(tokens)) == 800
    assert set(tokens) == {f"refresh-revocable-{n}" for n in range(800)}
    assert AuditEvent.objects.filter(action="grant.revoked").count() == 1000
    assert AuditEvent.objects.filter(action="grant.upstream_revoked").count() == 800

    again = run_job(job.pk)  # a finished job does nothing more
    assert again is not None and again.done == 1000 and len(local_server.requests) == 800


@pytest.mark.django_db(transaction=True)
def test_by_service_revokes_grants_it_used_or_was_issued_tokens_for(owner, outsider, eager_celery):
    app = make_app()
    service = make_service("reports", app=app)
    used = save_grant(owner, app, 1, last_used_by=service)
    issued = save_grant(outsider, app, 2)
    untouched = save_grant(owner, app, 3)
    trail.record(
        "token.issued", actor_type="service", actor="reports", service="reports", grant_id=issued.pk
    )
    trail.record(
        "token.issued", actor_type="service", actor="other", service="other", grant_id=untouched.pk
    )

    out = []
    call_command(
        "revokegrants",
        "--service",
        "reports",
        "--reason",
        "key leaked",
        "--json",
        "--wait",
        stdout=type("W", (), {"write": lambda self, s: out.append(s)})(),
    )
    result = json.loads(out[0])
    assert (result["status"], result["total"], result["revoked"]) == ("done", 2, 2)
    states = dict(Grant.objects.values_list("pk", "status"))
    assert states[used.pk] == states[issued.pk] == "revoked"
    assert states[untouched.pk] == "active"


@pytest.mark.django_db(transaction=True)
def test_the_command_enqueues_by_user_and_prints_the_job(owner, outsider, eager_celery, capsys):
    app = make_app()
    save_grant(owner, app, 1)
    save_grant(owner, make_app("other"), 2)
    keep = save_grant(outsider, app, 3)
    call_command("revokegrants", "--user", "alice", "--reason", "offboarded")
    job = RevocationJob.objects.get()
    assert str(job.pk) in capsys.readouterr().out
    job.refresh_from_db()
    assert (job.status, job.done, job.criteria) == ("done", 2, {"user": "alice"})
    assert Grant.objects.filter(user=owner, status="revoked").count() == 2
    keep.refresh_from_db()
    assert keep.status == "active" and keep.has_secret("access_token")


@pytest.mark.django_db
@pytest.mark.parametrize(
    "args",
    [
        ["--user", "nobody", "--reason", "x"],
        ["--provider", "nope", "--reason", "x"],
        ["--all", "--reason", "  "],
    ],
)
def test_the_command_refuses_unknown_targets_and_empty_reasons(owner, args):
    from django.core.management.base import CommandError

    grant = save_grant(owner, make_app())
    with pytest.raises(CommandError):
        call_command("revokegrants", *args)
    assert RevocationJob.objects.count() == 0
    grant.refresh_from_db()
    assert grant.status == "active"
