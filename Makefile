# The two commands of the README: `make demo` and `make test`.
# Both build the virtual environment themselves on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo up down status test test-unit test-integration test-e2e lint typecheck bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[local,dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/signalops demo

up: $(STAMP)
	$(VENV)/bin/signalops up

down: $(STAMP)
	$(VENV)/bin/signalops down

status: $(STAMP)
	$(VENV)/bin/signalops status

test: $(STAMP) lint typecheck
	$(PY) -m pytest -q --durations=25 tests/unit tests/integration tests/e2e

test-unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

test-integration: $(STAMP)
	$(PY) -m pytest -q tests/integration

test-e2e: $(STAMP)
	$(PY) -m pytest -q tests/e2e

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy libs services infra

bench: $(STAMP)
	$(PY) bench/memory.py

clean:
	rm -rf $(VENV) .signalops .pytest_cache
