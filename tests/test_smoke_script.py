"""The production smoke run's command line (scripts/smoke_production.py): a fresh
virtualenv by default, or an existing one given with --venv (or SMOKE_VENV), reused as is."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location(
    "smoke_script", ROOT / "scripts" / "smoke_production.py"
)
assert _spec is not None and _spec.loader is not None
smoke = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(smoke)


@pytest.fixture
def venv(tmp_path):
    """A directory with the commands the smoke run starts from a virtualenv."""
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    for name in ("python", "gunicorn", "celery"):
        command = tmp_path / "venv" / "bin" / name
        command.write_text("#!/bin/sh\n")
        command.chmod(0o755)
    return tmp_path / "venv"


@pytest.fixture
def no_subprocess(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"ran {args}")

    monkeypatch.setattr(subprocess, "run", refuse)


def test_it_builds_a_fresh_venv_by_default(monkeypatch, tmp_path):
    monkeypatch.delenv("SMOKE_VENV", raising=False)

    run = smoke.Run(tmp_path, smoke.parse_args([]).venv)

    assert run.given_venv is None
    assert run.venv == tmp_path / "venv"


def test_it_reuses_the_venv_given_with_the_option_and_installs_nothing(
    monkeypatch, tmp_path, venv, no_subprocess
):
    monkeypatch.delenv("SMOKE_VENV", raising=False)
    run = smoke.Run(tmp_path / "work", smoke.parse_args(["--venv", str(venv)]).venv)

    run.install()

    assert run.venv == venv
    assert run.env["PATH"].startswith(f"{venv / 'bin'}:")
    assert not (tmp_path / "work" / "venv").exists()


def test_it_reads_the_venv_from_smoke_venv(monkeypatch, venv):
    monkeypatch.setenv("SMOKE_VENV", str(venv))

    assert smoke.parse_args([]).venv == venv


def test_it_refuses_a_venv_without_the_brokers_commands(monkeypatch, tmp_path, venv, capsys):
    monkeypatch.delenv("SMOKE_VENV", raising=False)
    (venv / "bin" / "gunicorn").unlink()

    with pytest.raises(SystemExit) as exited:
        smoke.parse_args(["--venv", str(venv)])

    assert exited.value.code == 2
    assert "no bin/gunicorn" in capsys.readouterr().err
