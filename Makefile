# Two commands: `make run` and `make test`. Both build .venv from pyproject.toml on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test test-pg lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.run-deps: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.test-deps: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.run-deps

run: $(VENV)/.run-deps
	$(BIN)/runforge serve

lint: $(VENV)/.test-deps
	$(BIN)/ruff check app tests bench
	$(BIN)/ruff format --check app tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q

# The suite again with every test server on a fresh PostgreSQL database (RUNFORGE_TEST_PG_URL's
# server, default postgresql://postgres@127.0.0.1:5432/test); the page's browser tests excepted.
test-pg: $(VENV)/.test-deps
	RUNFORGE_TEST_DATABASE=postgresql $(BIN)/pytest -q --ignore=tests/browser

bench: $(VENV)/.run-deps
	$(BIN)/python bench/stop_latency.py
	$(BIN)/python bench/codegen.py
	$(BIN)/python bench/proxy_compare.py

clean:
	rm -rf $(VENV) runs/runforge.db* runs/workspaces
