# flujo_dagster: two commands on a fresh machine (python3 + make): `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOME_DIR := $(CURDIR)/.dagster_home

.PHONY: install demo dev inbox test lint bench clean ui-smoke deploy-smoke

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip check
	touch $(STAMP)

install: $(STAMP)

$(HOME_DIR)/dagster.yaml:
	mkdir -p $(HOME_DIR)
	printf 'telemetry:\n  enabled: false\n' > $(HOME_DIR)/dagster.yaml

## Run the example research digest end to end on a local Dagster instance (offline model).
demo: $(STAMP) $(HOME_DIR)/dagster.yaml
	DAGSTER_HOME=$(HOME_DIR) $(BIN)/flujo-dagster run definitions:digest --input topic="typed agents"

## The Dagster UI on http://127.0.0.1:3000 with the example code location; parked runs link to `make inbox`.
dev: $(STAMP) $(HOME_DIR)/dagster.yaml
	DAGSTER_HOME=$(HOME_DIR) FLUJO_DAGSTER_INBOX_URL=http://127.0.0.1:3100 $(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

## The reviewers' inbox on http://127.0.0.1:3100 (local mode), on the instance `make dev` serves.
inbox: $(STAMP) $(HOME_DIR)/dagster.yaml
	DAGSTER_HOME=$(HOME_DIR) FLUJO_DAGSTER_WEBSERVER_URL=http://127.0.0.1:3000 $(BIN)/flujo-dagster inbox --host 127.0.0.1 --port 3100

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict flujo_dagster
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest -q

## The UI as a user sees it: dagster dev with the examples, driven by headless Chromium (Debian's /usr/bin/chromium,
## never downloaded); checks what each page shows and saves the screenshots under docs/screenshots/.
ui-smoke: $(STAMP)
	$(BIN)/python -m tests.ui_smoke

## flujo on a production-shaped deployment on 127.0.0.1: webserver, daemon and two dagster-celery workers, the
## instance in a fresh PostgreSQL database, RabbitMQ as broker (a vhost of its own), Redis as result backend; runs the
## examples, a budgeted 32-item Map and a worker kill on the Celery executor, stops everything, ends with a JSON line.
deploy-smoke: $(STAMP)
	$(BIN)/python -m tests.deploy_smoke

bench: $(STAMP)
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/parallel.py
	$(BIN)/python benchmarks/inline.py
	$(BIN)/python benchmarks/budget.py
	$(BIN)/python benchmarks/cache.py
	$(BIN)/python -m benchmarks.approvals

clean:
	rm -rf $(VENV) .venv-highest $(HOME_DIR) .mypy_cache .ruff_cache .hypothesis *.egg-info
