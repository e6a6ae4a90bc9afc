# The two commands of README.md: `make dev` runs the whole system, `make test` the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: dev test test-quick lint install

$(BIN)/.installed: requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

install: $(BIN)/.installed

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
