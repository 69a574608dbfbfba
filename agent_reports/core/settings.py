"""Where agent_reports keeps its files, read from the environment when a run needs them.

Nothing here runs at import time: resources call these functions during execution, so a
changed environment applies to the next run without reloading the code location.
"""

from __future__ import annotations

from pathlib import Path

from dagster import EnvVar

ANALYSES = ("market", "anomalies", "churn", "compliance", "briefing")
# Analyses declared beyond the built-in five (a YAML component's), added as the code
# location builds them (core/declaration.py): their settings are read like the built-ins'.
_DECLARED: dict[str, None] = {}


def register_analysis(name: str) -> None:
    if name not in ANALYSES:
        _DECLARED[name] = None


def analysis_names() -> tuple[str, ...]:
    """The built-in analyses, then those declared in this process: the names that per-
    analysis settings (pings, budgets, AGENT_REPORTS_FAIL_ON_LLM_ERROR) accept."""
    return (*ANALYSES, *_DECLARED)


def env(name: str, default: str | None = None) -> str | None:
    """The variable's value, or `default` when it is unset or empty."""
    value = EnvVar(name).get_value()
    return value if value else default


def reports_dir() -> Path:
    """Root of the report files: `<root>/<analysis>/<partition>.{json,md,html}`."""
    return Path(env("AGENT_REPORTS_REPORTS_DIR", "reports")).resolve()


def state_dir() -> Path:
    """Durable state that is not a report: asset values, the LLM response cache, ledgers."""
    return Path(env("AGENT_REPORTS_STATE_DIR", "state")).resolve()


def database_url(sqlite_file: str) -> str:
    """AGENT_REPORTS_LEDGER_URL when set (one database for the ledgers), else an SQLite
    file of that name under the state dir."""
    url = env("AGENT_REPORTS_LEDGER_URL")
    if url:
        return url
    path = state_dir() / sqlite_file
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def data_dir() -> Path:
    """The drop folder read by the `files` source: `market/`, `logs/`, `customers/`."""
    return Path(env("AGENT_REPORTS_DATA_DIR", "data")).resolve()


def log_format() -> str | None:
    """AGENT_REPORTS_LOG_FORMAT: a preset name or a LogFormat / log_format string for every
    log file the folder's `.agent_reports.toml` does not name (unset: detect per file)."""
    return env("AGENT_REPORTS_LOG_FORMAT")
