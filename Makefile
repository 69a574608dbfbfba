# Two commands do all the set-up: `make run` and `make test` (see README.md).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: install pools run stack stack-down test lint format audit clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml

# The UI and the daemons (scheduler, sensors, backfills, run queue) on 127.0.0.1:3000,
# SQLite storage under .dagster_home, demo data, offline analyst unless OPENAI_API_KEY is set.
# Dagster 1.13 creates a pool's limit from `default_limit` only in the first dequeue pass
# that sees the pool, and does not apply it in that pass: on a fresh instance a burst of
# runs queued together would all start. Setting each pool's limit first closes that gap.
POOLS := market anomalies churn compliance briefing
pools: install $(DAGSTER_HOME)/dagster.yaml
	for pool in $(POOLS); do $(BIN)/dagster instance concurrency set $$pool 1 >/dev/null; done

run: install $(DAGSTER_HOME)/dagster.yaml pools
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

# The code server, webserver (127.0.0.1:3000) and daemon as separate processes on PostgreSQL
# (deploy/dagster.yaml; DAGSTER_PG_* settings, database created if missing). State in .stack/.
stack: install
	bash deploy/stack.sh start

stack-down:
	bash deploy/stack.sh stop

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Known vulnerabilities in the installed dependencies (pip-audit; see the script for what
# happens where no vulnerability database can be reached).
audit: install
	$(BIN)/python .ci/audit_dependencies.py

test: install lint audit
	bash .ci/ensure-postgres
	bash deploy/install-test-browser.sh
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .dagster_home .stack reports state .pytest_cache .ruff_cache
