# The two commands of README.md: `make dev` runs the whole system, `make test` the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: dev test test-quick lint install lock

# requirements.txt and requirements-dev.txt are locks compiled from the .in files beside them
# (`make lock`): every package pinned, with hashes. The client package (clients/python),
# editable and so without a hash, is installed apart; its dependencies are in the dev lock,
# setuptools to build it among them.
$(BIN)/.installed: requirements.txt requirements-dev.txt clients/python/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e ./clients/python
	touch $@

install: $(BIN)/.installed

# Compiles requirements*.in into the locks, keeping every pin the .in files do not change;
# UPGRADE=--upgrade-package=NAME (or UPGRADE=--upgrade, everything) moves pins on.
UPGRADE ?=
LOCK := $(BIN)/uv pip compile --universal --python-version 3.11 --generate-hashes --quiet $(UPGRADE)
lock: install
	$(LOCK) requirements.in -o requirements.txt
	$(LOCK) requirements-dev.in -o requirements-dev.txt

dev: install
	$(BIN)/python scripts/dev.py

test: install
	$(BIN)/pytest

# The developer's loop: the tests of one package or file (TESTS=tests/api), without those
# marked slow (gunicorn and Celery under load, fault drills) or browser (Chromium).
TESTS ?= tests
test-quick: install
	$(BIN)/pytest -m "not slow and not browser" $(TESTS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .
	$(BIN)/lint-imports
	$(BIN)/kubernetes-validate --strict --quiet deploy/kubernetes/*.yaml
	$(BIN)/python manage.py makemigrations --check --dry-run --settings=tests.settings
	test ! -f sandbox/manage.py || $(BIN)/python sandbox/manage.py makemigrations --check --dry-run
