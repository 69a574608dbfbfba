# Two commands do all the set-up: `make run` and `make test` (see README.md).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# --no-compile: pip would byte-compile every installed module (most never imported); Python
# compiles what it imports on first use instead. Measured: 190 s against 496 s for the runtime
# install under the same load (docs/operations.md).
PIP_INSTALL := $(BIN)/python -m pip --disable-pip-version-check --quiet install --no-compile
# Separate stamps: `make run` installs the runtime only; `make test` adds the test extras.
RUNTIME_STAMP := $(VENV)/.runtime-stamp
TEST_STAMP := $(VENV)/.test-stamp
INSTANCE_TEMPLATE := dagster.yaml
HOST ?= 127.0.0.1
PORT ?= 3000

export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: install install-test run stop stack stack-down test lint format audit clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(RUNTIME_STAMP): pyproject.toml | $(BIN)/python
	$(PIP_INSTALL) -e .
	touch $@

$(TEST_STAMP): pyproject.toml $(RUNTIME_STAMP)
	$(PIP_INSTALL) -e '.[test]'
	touch $@

install: $(RUNTIME_STAMP)

install-test: $(TEST_STAMP)

# dagster.yaml is the template of the instance file: Dagster reads it only from $DAGSTER_HOME
# (tools/dev.py runs `dg dev` there, so Dagster does not warn about the template).
$(DAGSTER_HOME)/dagster.yaml: $(INSTANCE_TEMPLATE)
	mkdir -p $(DAGSTER_HOME)
	cp $(INSTANCE_TEMPLATE) $@

# The UI and the daemons (scheduler, sensors, backfills, run queue) on http://$(HOST):$(PORT),
# SQLite storage under .dagster_home, demo data, offline analyst unless OPENAI_API_KEY is set.
# tools/dev.py sets the pool limits (only those that differ) and runs `dg dev` in its own
# process group, pid in $(DAGSTER_HOME)/dev.pid; Ctrl-C, SIGTERM or `make stop` end it.
run: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/python tools/dev.py run --host $(HOST) --port $(PORT)

stop:
	@if [ -x $(BIN)/python ]; then $(BIN)/python tools/dev.py stop; else echo "nothing to stop"; fi

# The code server, webserver (127.0.0.1:3000) and daemon as separate processes on PostgreSQL
# (deploy/dagster.yaml; DAGSTER_PG_* settings, database created if missing). State in .stack/.
stack: install
	bash deploy/stack.sh start

stack-down:
	bash deploy/stack.sh stop

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install-test
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Known vulnerabilities in the installed dependencies (pip-audit; see the script for what
# happens where no vulnerability database can be reached).
audit: install-test
	$(BIN)/python .ci/audit_dependencies.py

# dg validates every defs.yaml against its component's schema, then loads the whole code
# location (file, line and field of any mistake): about 10 s and 12 s of CPU each here.
# VIRTUAL_ENV: dg warns when the active environment is not the project's .venv.
test: install-test lint audit
	VIRTUAL_ENV=$(CURDIR)/$(VENV) $(BIN)/dg check yaml
	VIRTUAL_ENV=$(CURDIR)/$(VENV) $(BIN)/dg check defs
	bash .ci/ensure-postgres
	bash deploy/install-test-browser.sh
	$(BIN)/python -m pytest -n 2 --dist loadgroup --durations=30

clean:
	rm -rf $(VENV) .dagster_home .stack reports state .pytest_cache .ruff_cache
