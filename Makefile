# Two commands for a newcomer: `make run` (install and start Flywheel) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint typecheck pytest test-sqlite bench clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; sys.exit("Flywheel needs Python 3.11 or newer") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.run-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@ $(VENV)/.run-installed

run: $(VENV)/.run-installed
	$(BIN)/flywheel up

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy

pytest: $(VENV)/.dev-installed
	$(BIN)/pytest

test: lint typecheck pytest

# The suite on an embedded SQLite database, as on a laptop without Postgres. The slow
# end-to-end tests are left out here: they start their own processes (embedded mode already
# runs on SQLite, the production-shaped ones need Postgres) and run in `make test`; so are
# the pure tests of app/ml, which touch no database and already ran.
test-sqlite: $(VENV)/.dev-installed
	FLYWHEEL_TEST_SQLITE=1 FLYWHEEL_TEST_DATABASE_URL= $(BIN)/pytest -m "not slow" --ignore=tests/ml

bench: $(VENV)/.dev-installed
	$(BIN)/python benchmarks/tracking.py
	$(BIN)/python benchmarks/dispatch.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
