#!/usr/bin/env bash
# The agent_reports stack on this machine: code server, webserver (127.0.0.1 only) and
# daemon as separate processes on PostgreSQL. Usage: deploy/stack.sh start|stop|status
# Settings: STACK_DIR (.stack), STACK_PORT (3000), STACK_CODE_PORT (4266), DAGSTER_PG_HOST,
# _PORT, _USER, _PASSWORD, _DB (127.0.0.1, 5432, postgres, "", agent_reports). See stack.py.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${STACK_PYTHON:-$repo/.venv/bin/python}
exec "$python" "$repo/deploy/stack.py" "$@"
