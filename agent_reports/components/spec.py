"""The YAML schema of a declared analysis (`defs/<name>/defs.yaml`, type
agent_reports.ScheduledReport): every field, its type and its rules, checked when the code
location loads, so `dg check yaml` / `dg check defs` name the file, line and field of a
mistake. docs/declared-analyses.md describes each field."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dagster import Model
from pydantic import Field, field_validator, model_validator

NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_DURATION_PART = re.compile(r"(\d+)\s*(m|h|d)")
_DURATION = re.compile(r"^\s*(\d+\s*(m|h|d)\s*)+$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}
# The window's bounds, as the input, metric and check SQL may bind them (never formatted in).
WINDOW_PARAMETERS = (
    "window_start",
    "window_end",
    "window_start_date",
    "window_end_date",
    "partition_key",
)
GRAIN_LENGTHS = {
    "hourly": timedelta(hours=1),
    "daily": timedelta(days=1),
    "weekly": timedelta(days=7),
    "monthly": timedelta(days=28),
}
BUILT_IN = ("market", "anomalies", "churn", "compliance", "briefing", "ingest")


def parse_duration(text: str) -> timedelta:
    """`90m`, `2h`, `1d6h`: minutes, hours and days, added up."""
    if not _DURATION.match(text):
        raise ValueError(f"a duration looks like 30m, 2h or 1d6h, not {text!r}")
    return sum(
        (timedelta(**{_UNITS[unit]: int(n)}) for n, unit in _DURATION_PART.findall(text)),
        timedelta(0),
    )


def _duration(cls: type, value: str | None) -> str | None:
    """A field validator: the value parses as a duration."""
    if value is not None:
        parse_duration(value)
    return value


def _identifier(cls: type, value: str) -> str:
    """A field validator: a lower-case identifier (asset and check names derive from it)."""
    if not NAME.match(value):
        raise ValueError(f"{value!r} must be lower-case letters, digits and _ (a-z first)")
    return value


class Partitions(Model):
    """One partition per window: its grain, the timezone its days start in, its first window."""

    grain: Literal["hourly", "daily", "weekly", "monthly"] = Field(
        description="hourly, daily, weekly (Monday start) or monthly windows"
    )
    timezone: str = Field(default="UTC", description="IANA time zone of the windows")
    start: str = Field(description="first window: YYYY-MM-DD (hourly: YYYY-MM-DD-HH:MM)")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (e.g. UTC, Europe/Berlin)") from None
        return value

    @model_validator(mode="after")
    def _start(self) -> Partitions:
        try:
            if self.grain == "hourly":
                datetime.strptime(self.start + "+0000", "%Y-%m-%d-%H:%M%z")
            else:
                date.fromisoformat(self.start)
        except ValueError:
            form = "YYYY-MM-DD-HH:MM" if self.grain == "hourly" else "YYYY-MM-DD"
            raise ValueError(f"start {self.start!r} is not a {form} date") from None
        return self


class Schedule(Model):
    """When a window runs: `lag` after it ends (the cron is derived from the grain, so it
    cannot drift from the partitions), or an explicit `cron` in the partitions' timezone."""

    lag: str | None = Field(
        default=None,
        description="how long after the window ends it runs, e.g. 5m, 2h, 1d6h "
        "(default 5m for hourly windows, 1h otherwise)",
    )
    cron: str | None = Field(
        default=None, description="a cron expression instead of the lag, e.g. '30 6 * * *'"
    )

    _lag = field_validator("lag")(_duration)

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        from dagster._utils.schedules import is_valid_cron_string

        if value is not None and not is_valid_cron_string(value):
            raise ValueError(f"{value!r} is not a cron expression (five fields)")
        return value

    @model_validator(mode="after")
    def _one(self) -> Schedule:
        if self.lag is not None and self.cron is not None:
            raise ValueError("give either lag or cron, not both")
        return self


def _uses_window(sql: str) -> bool:
    return any(re.search(rf"[:$]{name}\b", sql) for name in ("window_start", "window_end"))


class SqlInput(Model):
    """Rows from a database through SQLAlchemy; the URL (a secret) only in an env variable."""

    url_env: str = Field(description="env variable holding the SQLAlchemy URL")
    sqlite_file: str | None = Field(
        default=None,
        description="when the variable is unset: this SQLite file under the data dir "
        "(AGENT_REPORTS_DATA_DIR)",
    )
    demo_sql_file: str | None = Field(
        default=None,
        description="SQL script (beside defs.yaml) that creates `sqlite_file` when it is "
        "missing: demo data, never run against a configured URL",
    )
    query: str = Field(
        description="SELECT of the window's rows; bind :window_start and :window_end "
        "(UTC 'YYYY-MM-DD HH:MM:SS'), never format them in"
    )

    @field_validator("url_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Z][A-Z0-9_]*", value):
            raise ValueError(f"{value!r} is not an environment variable name (A-Z, 0-9, _)")
        return value

    @field_validator("query")
    @classmethod
    def _window(cls, value: str) -> str:
        if not _uses_window(value):
            raise ValueError(
                "the query must bind :window_start and/or :window_end, so the window "
                "comes from the partition"
            )
        return value


class FileTable(Model):
    """One table the DuckDB query reads: Parquet or CSV files, or the access-log store."""

    parquet: str | None = Field(default=None, description="path or glob under the data dir")
    csv: str | None = Field(default=None, description="path or glob under the data dir")
    access_logs: str | None = Field(
        default=None,
        description="a logs folder under the data dir: its lines in the window, parsed once "
        "into the log store (core/log_store.py)",
    )

    @model_validator(mode="after")
    def _one(self) -> FileTable:
        given = [k for k in ("parquet", "csv", "access_logs") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of parquet, csv or access_logs")
        return self


class DuckDBInput(Model):
    """Rows from files through DuckDB SQL over the declared tables."""

    tables: dict[str, FileTable] = Field(description="table name → its files")
    query: str = Field(
        description="DuckDB SELECT of the window's rows; bind $window_start and $window_end"
    )

    @model_validator(mode="after")
    def _window(self) -> DuckDBInput:
        only_logs = all(t.access_logs is not None for t in self.tables.values())
        if not only_logs and not _uses_window(self.query):
            raise ValueError(
                "the query must bind $window_start and/or $window_end (only access_logs "
                "tables come already cut to the window)"
            )
        return self


class Input(Model):
    sql: SqlInput | None = Field(default=None, description="a database table (SQLAlchemy)")
    duckdb: DuckDBInput | None = Field(default=None, description="files (DuckDB)")

    @model_validator(mode="after")
    def _one(self) -> Input:
        if (self.sql is None) == (self.duckdb is None):
            raise ValueError("give exactly one of sql or duckdb")
        return self


class Metric(Model):
    """A figure or table the report shows: DuckDB SQL over `input` (the window's rows)."""

    name: str = Field(description="its key in the report's metrics and its table title")
    sql: str = Field(description="DuckDB SELECT over `input`; may bind $window_start etc.")

    _name = field_validator("name")(_identifier)


class Check(Model):
    """A rule on the input: SQL that returns the rows breaking it (none: the check passes)."""

    name: str = Field(description="the asset check's name")
    sql: str = Field(description="DuckDB SELECT over `input` of the offending rows")
    description: str | None = Field(default=None, description="what the rule is, for the UI")
    blocking: bool = Field(default=True, description="a failure stops the report")

    _name = field_validator("name")(_identifier)


class Prompt(Model):
    file: str = Field(description="the instructions, a text file beside defs.yaml")
    version: str = Field(description="bump it when the question changes (cache key)")


class FindingField(Model):
    name: str = Field(description="field name in each finding")
    type: Literal["string", "number", "integer", "boolean"] = Field(default="string")
    description: str | None = Field(default=None, description="what the model puts there")

    _name = field_validator("name")(_identifier)


class Findings(Model):
    """Each finding has a title, a detail and subjects (names from the metrics), plus these."""

    max: int = Field(default=5, description="at most this many findings (0 to 12)")
    fields: list[FindingField] = Field(default_factory=list, description="extra fields")

    @field_validator("max")
    @classmethod
    def _max(cls, value: int) -> int:
        if not 0 <= value <= 12:
            raise ValueError(f"findings.max must be 0 to 12, not {value}")
        return value

    @field_validator("fields")
    @classmethod
    def _names(cls, value: list[FindingField]) -> list[FindingField]:
        taken = {"title", "detail", "subjects"}
        for item in value:
            if item.name in taken:
                raise ValueError(f"finding field {item.name!r} is built in or given twice")
            taken.add(item.name)
        return value


class Budget(Model):
    monthly_tokens: int | None = Field(
        default=None,
        description="LLM tokens a month (env AGENT_REPORTS_TOKEN_BUDGET_<NAME> wins)",
    )
    monthly_usd: float | None = Field(
        default=None, description="USD a month (env AGENT_REPORTS_USD_BUDGET_<NAME> wins)"
    )


class AnalysisSpec(Model):
    """Everything one declared analysis is: the attributes of its defs.yaml."""

    name: str = Field(description="the analysis: assets <name>_input, <name>_report")
    description: str = Field(default="", description="one line for the UI")
    owner: str | None = Field(default=None, description="e.g. team:growth or a@b.com")
    partitions: Partitions
    schedule: Schedule = Field(default_factory=Schedule)
    pool: str | None = Field(default=None, description="concurrency pool (default: the name)")
    deadline: str = Field(description="how long after the window ends its report is due")
    input: Input
    metrics: list[Metric] = Field(description="the report's figures, one query each")
    prompt: Prompt
    findings: Findings = Field(default_factory=Findings)
    checks: list[Check] = Field(default_factory=list)
    budget: Budget = Field(default_factory=Budget)

    _deadline = field_validator("deadline")(_duration)

    @field_validator("metrics")
    @classmethod
    def _some_metrics(cls, value: list[Metric]) -> list[Metric]:
        if not value:
            raise ValueError("declare at least one metric")
        names = [metric.name for metric in value]
        if "coverage" in names or len(set(names)) != len(names):
            raise ValueError("metric names must be unique and not 'coverage' (the row counts)")
        return value

    @field_validator("name")
    @classmethod
    def _analysis_name(cls, value: str) -> str:
        _identifier(cls, value)
        if value in BUILT_IN:
            raise ValueError(f"{value!r} is a built-in analysis: choose another name")
        return value

    @model_validator(mode="after")
    def _lag_within_grain(self) -> AnalysisSpec:
        longest = GRAIN_LENGTHS[self.partitions.grain]
        if self.schedule.cron is None and not timedelta(0) <= self.lag < longest:
            raise ValueError(
                f"schedule.lag {self.schedule.lag!r} must be shorter than one "
                f"{self.partitions.grain} window"
            )
        return self

    @property
    def pool_name(self) -> str:
        return self.pool or self.name

    @property
    def lag(self) -> timedelta:
        default = "5m" if self.partitions.grain == "hourly" else "1h"
        return parse_duration(self.schedule.lag or default)
