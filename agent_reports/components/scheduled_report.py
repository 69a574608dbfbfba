"""`agent_reports.ScheduledReport`: an analysis declared in YAML, with the promises of the
built-in ones.

A `defs/<name>/defs.yaml` of this type (fields: spec.py) becomes two partitioned assets in
the analysis' pool, `<name>_input` (the window's rows, with the declared checks as asset
checks) and `<name>_report` (metric SQL → analyst → the report files, written by the same
machinery as the built-in reports), plus a job, a schedule built from the partitions and a
catch-up sensor. definitions.py merges them with the built-in analyses before the run locks
and freshness are applied, so a declared analysis is locked, caught up and audited alike.
"""

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetsDefinition,
    Component,
    ComponentLoadContext,
    DailyPartitionsDefinition,
    Definitions,
    HourlyPartitionsDefinition,
    MaterializeResult,
    MetadataValue,
    MonthlyPartitionsDefinition,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    TimeWindowPartitionsDefinition,
    WeeklyPartitionsDefinition,
    asset,
    asset_check,
    schedule,
)
from dagster.components import scaffold_with
from pydantic import BaseModel, Field, create_model

from agent_reports.components import queries
from agent_reports.components.scaffold import ScheduledReportScaffolder
from agent_reports.components.spec import AnalysisSpec, parse_duration
from agent_reports.core import settings
from agent_reports.core.analyst import (
    AnalystAnswer,
    AnalystRequest,
    Finding,
    Narrative,
    check_narrative,
)
from agent_reports.core.deadlines import Deadline
from agent_reports.core.declaration import Analysis, Schedule, analysis_definitions
from agent_reports.core.publishing import (
    publish_reports,
    report_from_answer,
    report_metadata,
    report_notes,
    report_quality_check,
)
from agent_reports.core.reports import Report, Table
from agent_reports.core.resources import AnalystResource, ReportStoreResource

PROJECT_ROOT = Path(__file__).resolve().parents[2]

FIELD_TYPES = {"string": str, "number": float, "integer": int, "boolean": bool}
DEFAULT_OWNER = "team:agent-reports"
NO_ROWS_NOTE = (
    "No rows were read for this window: the input query returned nothing. This is not "
    "evidence that nothing happened; check that the source holds this window."
)


@scaffold_with(ScheduledReportScaffolder)
class ScheduledReport(Component):
    """An LLM-written report per time window, declared without Python: partitions, schedule,
    pool, deadline, input SQL, metric SQL, prompt, findings, checks, budget.

    Its attributes are `AnalysisSpec` (spec.py), a plain `dagster.Model`: not `Resolvable`,
    whose template alternatives (`{{ ... }}` for every nested field) turn a wrong nested
    value into "not valid under any of the given schemas" on its parent; without them
    `dg check yaml` names the exact field and line. Settings that differ per deployment
    come from environment variables named in the YAML (`url_env`), read
    at run time, so secrets never sit in the YAML or in the code location's snapshot.
    """

    def __init__(self, spec: AnalysisSpec, folder: Path = Path(".")):
        self.spec = spec
        self.folder = folder

    @classmethod
    def get_model_cls(cls) -> type[AnalysisSpec]:
        return AnalysisSpec

    @classmethod
    def load(cls, attributes: BaseModel | None, context: ComponentLoadContext) -> "ScheduledReport":
        if not isinstance(attributes, AnalysisSpec):
            raise TypeError(f"{context.path / 'defs.yaml'}: no attributes declared")
        return cls(attributes, context.path)

    def build_defs(self, context: ComponentLoadContext) -> Definitions:
        """The built-in analyses' builder, given this analysis' declaration: job, schedule,
        catch-up sensor, freshness, deadline (alerts, audit), owner and tags."""
        return analysis_definitions(self.built().declaration)

    def built(self) -> "BuiltAnalysis":
        return BuiltAnalysis(self.spec, self.folder)


class _Configured:
    """The analyst publish_reports asks, with the declared budget applied (an env limit for
    the analysis still wins, as it does for the built-in analyses)."""

    def __init__(self, resource: AnalystResource, spec: AnalysisSpec):
        self.max_concurrency = resource.max_concurrency
        self._analyst = resource.get()
        budget = getattr(self._analyst.inner, "budget", None)
        if budget is not None:
            name = spec.name
            if spec.budget.monthly_tokens is not None and not settings.env(
                f"AGENT_REPORTS_TOKEN_BUDGET_{name.upper()}"
            ):
                budget.limits[name] = spec.budget.monthly_tokens
            if spec.budget.monthly_usd is not None and not settings.env(
                f"AGENT_REPORTS_USD_BUDGET_{name.upper()}"
            ):
                budget.usd_limits[name] = spec.budget.monthly_usd

    def get(self):
        return self._analyst


def shown_path(path: Path) -> str:
    """The path as the UI and errors show it: from the project root when it is inside it,
    so descriptions do not change with the checkout's location."""
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


class BuiltAnalysis:
    """The Dagster definitions of one declared analysis (built once per code-location load)."""

    def __init__(self, spec: AnalysisSpec, folder: Path):
        self.spec = spec
        self.folder = folder
        self.name = spec.name
        self.where = shown_path(folder / "defs.yaml")
        prompt_path = folder / spec.prompt.file
        if not prompt_path.is_file():
            raise FileNotFoundError(f"{self.where}: prompt.file {spec.prompt.file!r} not found")
        self.instructions = prompt_path.read_text()
        self.schema = narrative_model(spec)
        self.prompt_version = prompt_version(spec, self.instructions, self.schema)

    # ------------------------------------------------------------------ partitions, schedule

    @cached_property
    def partitions_def(self) -> TimeWindowPartitionsDefinition:
        p = self.spec.partitions
        kinds = {
            "hourly": HourlyPartitionsDefinition,
            "daily": DailyPartitionsDefinition,
            "monthly": MonthlyPartitionsDefinition,
        }
        if p.grain == "weekly":  # Monday start, as the churn report's weeks
            return WeeklyPartitionsDefinition(start_date=p.start, timezone=p.timezone, day_offset=1)
        return kinds[p.grain](start_date=p.start, timezone=p.timezone)

    @cached_property
    def skeleton(self) -> "DeclaredAnalysis":
        """The declaration without its assets (they are built from its asset arguments)."""
        spec = self.spec
        return DeclaredAnalysis(
            name=self.name,
            partitions=self.partitions_def,
            schedule=self.schedule(),
            lag=self.due_after_end,
            owner=spec.owner or DEFAULT_OWNER,
            cadence=spec.partitions.grain,
            description=f"{spec.description or self.name}: input → metrics → report for one "
            f"{spec.partitions.grain} window (or a range, in a backfill). Declared in "
            f"{self.where}.",
            pool=spec.pool_name,
            deadline=Deadline(after_end=parse_duration(spec.deadline)),
            cron=spec.schedule.cron,
        )

    @cached_property
    def declaration(self) -> "DeclaredAnalysis":
        """What core/declaration.py builds the analysis from, as for the built-in ones."""
        assets = (self.input_asset, self.report_asset, *self.checks)
        return replace(self.skeleton, assets=assets)

    def schedule(self) -> Schedule:
        lag, grain = self.spec.lag, self.spec.partitions.grain
        if self.spec.schedule.cron:
            return Schedule(
                description=f"At '{self.spec.schedule.cron}' "
                f"({self.spec.partitions.timezone}): the newest complete window (run_key = it)."
            )
        hours, minutes = divmod(int(lag.total_seconds() // 60) % (24 * 60), 60)
        return Schedule(
            description=f"{self.name}: each {grain} window, {self.spec.schedule.lag or lag} "
            "after it ends (run_key = the window).",
            minute=minutes,
            hour=None if grain == "hourly" else hours,
            day_of_week=(1 + lag.days) % 7 if grain == "weekly" else None,
            day_of_month=1 + lag.days if grain == "monthly" else None,
        )

    @cached_property
    def due_after_end(self) -> timedelta:
        """When the schedule requests a window, after the window's end (catch-up waits that)."""
        if not self.spec.schedule.cron:
            return self.spec.lag
        return cron_lag(self.partitions_def, self.spec.schedule.cron)

    # ---------------------------------------------------------------------------- assets

    def _common(self) -> dict[str, Any]:
        return self.skeleton.asset_args()

    def params(self, key: str) -> dict[str, str]:
        window = self.partitions_def.time_window_for_partition_key(key)
        return queries.window_parameters(key, window)

    @cached_property
    def input_asset(self) -> AssetsDefinition:
        spec, kind = self.spec, "sql" if self.spec.input.sql else "duckdb"

        @asset(
            name=f"{self.name}_input",
            io_manager_key="range_io_manager",
            kinds={kind},
            description=f"The window's input rows ({kind}), declared in {self.where}.",
            **self._common(),
        )
        def _input(context: AssetExecutionContext) -> dict[str, pd.DataFrame]:
            values = {}
            for key in context.partition_keys:
                frame = self.read_input(key)
                values[key] = frame
                context.add_asset_metadata(
                    {"rows_read": len(frame), "columns": len(frame.columns)}, partition_key=key
                )
                if frame.empty:
                    context.log.warning(f"{spec.name} {key}: the input returned no rows")
            return values

        return _input

    def read_input(self, key: str) -> pd.DataFrame:
        params, where = self.params(key), f"{self.where}: input"
        if self.spec.input.sql is not None:
            return queries.read_sql_input(self.spec.input.sql, self.folder, params, where)
        window = self.partitions_def.time_window_for_partition_key(key)
        return queries.read_duckdb_input(self.spec.input.duckdb, window, params, where)

    @cached_property
    def report_asset(self) -> AssetsDefinition:
        @asset(
            name=f"{self.name}_report",
            ins={"rows": AssetIn(key=AssetKey(f"{self.name}_input"))},
            kinds={"openai", "html"},
            description=f"{self.spec.description or self.name}: the window's report "
            f"(metrics from SQL, narrative from the analyst, cached). Declared in {self.where}.",
            **self._common(),
        )
        def _report(
            context: AssetExecutionContext,
            rows: dict[str, pd.DataFrame],
            analyst: AnalystResource,
            reports: ReportStoreResource,
        ) -> MaterializeResult:
            return self.publish(context, rows, analyst, reports)

        return _report

    # ----------------------------------------------------------------------------- report

    def metrics(self, key: str, frame: pd.DataFrame) -> tuple[dict[str, Any], list[Table]]:
        """The declared metric queries over the window's rows, and the report's tables."""
        values: dict[str, Any] = {"coverage": {"rows_read": len(frame)}}
        tables = []
        for metric in self.spec.metrics:
            where = f"{self.where}: metrics[{metric.name}]"
            columns, rows = queries.query_rows(frame, metric.sql, self.params(key), where)
            values[metric.name] = rows
            tables.append(Table(metric.name, columns, [list(r.values()) for r in rows]))
        return values, tables

    def request(self, key: str, metrics: dict[str, Any]) -> AnalystRequest:
        window = self.partitions_def.time_window_for_partition_key(key)
        data = {
            "analysis": self.name,
            "window": {"start": window.start.isoformat(), "end": window.end.isoformat()},
            "metrics": metrics,
        }
        known = known_subjects(metrics)
        return AnalystRequest(
            analysis=self.name,
            prompt_version=self.prompt_version,
            instructions=self.instructions,
            data=data,
            schema=self.schema,
            offline=offline_narrative,
            check=lambda narrative, _data: check_narrative(
                narrative, known, self.spec.findings.max
            ),
        )

    def publish(
        self,
        context: AssetExecutionContext,
        rows: Mapping[str, pd.DataFrame],
        analyst: AnalystResource,
        reports: ReportStoreResource,
    ) -> MaterializeResult:
        computed = {key: self.metrics(key, rows[key]) for key in context.partition_keys}
        with_rows = {k: v for k, v in computed.items() if rows[k].shape[0]}
        requests = {key: self.request(key, metrics) for key, (metrics, _) in with_rows.items()}
        written = publish_reports(
            context,
            _Configured(analyst, self.spec),
            reports.path(),
            requests,
            lambda key, answer: self.report(key, *computed[key], answer),
        )
        for key in computed.keys() - with_rows.keys():  # nothing to ask the analyst about
            written.append(self.write_empty(context, key, *computed[key], reports.path()))
        return MaterializeResult(metadata={"reports_written": MetadataValue.int(len(written))})

    def report(
        self, key: str, metrics: dict, tables: list[Table], answer: AnalystAnswer, **fields
    ) -> Report:
        return report_from_answer(
            self.skeleton,
            key,
            answer,
            prompt_version=self.prompt_version,
            findings=answer.narrative["findings"],
            metrics=metrics,
            tables=tables,
            notes=fields.pop("notes", report_notes(answer)),
            **fields,
        )

    def write_empty(
        self, context: AssetExecutionContext, key: str, metrics: dict, tables: list, root: Path
    ) -> Report:
        """A window with no input rows: a flagged report written by code, no LLM request."""
        window = self.partitions_def.time_window_for_partition_key(key)
        narrative = {
            "summary": f"No data for {key}: the input returned no rows between "
            f"{window.start.isoformat()} and {window.end.isoformat()}.",
            "findings": [],
        }
        fingerprint = self.request(key, metrics).input_fingerprint
        answer = AnalystAnswer(narrative, "code (no input rows)", fingerprint)
        report = self.report(key, metrics, tables, answer, notes=[NO_ROWS_NOTE], degraded=True)
        paths = report.write(root)
        context.add_asset_metadata(report_metadata(report, answer, paths), partition_key=key)
        return report

    # ----------------------------------------------------------------------------- checks

    @cached_property
    def checks(self) -> list:
        return [*(self.sql_check(check) for check in self.spec.checks), self.quality_check()]

    def sql_check(self, check):
        @asset_check(
            asset=self.input_asset,
            name=check.name,
            description=check.description or f"no rows from: {check.sql.strip()}",
            blocking=check.blocking,
            partitions_def=self.partitions_def,
        )
        def _check(context, rows: dict[str, pd.DataFrame]) -> AssetCheckResult:
            where = f"{self.where}: checks[{check.name}]"
            bad = {
                key: queries.query_rows(rows[key], check.sql, self.params(key), where)[1]
                for key in context.partition_keys
            }
            count = sum(len(found) for found in bad.values())
            examples = [row for found in bad.values() for row in found][:20]
            return AssetCheckResult(
                passed=count == 0,
                metadata={"bad_rows": count, "examples": MetadataValue.json(examples)},
                description=None if count == 0 else f"{count} row(s) break {check.name}",
            )

        return _check

    def quality_check(self):
        @asset_check(
            asset=self.report_asset,
            name="report_is_grounded",
            description="Each report of the run exists, has a summary, was not degraded, and "
            "read at least one input row.",
            partitions_def=self.partitions_def,
        )
        def _grounded(context, reports: ReportStoreResource) -> AssetCheckResult:
            return report_quality_check(
                reports.path(), self.name, context.partition_keys, no_rows_problem
            )

        return _grounded


# -------------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class DeclaredAnalysis(Analysis):
    """A declaration whose `cron`, when set, requests the newest complete window at each
    tick, as a lag-derived schedule does (the built-in `Schedule.cron` requests the window
    the tick falls in, which suits the briefing but not a report on a finished window)."""

    cron: str | None = None

    @cached_property
    def schedule_def(self) -> ScheduleDefinition:
        if self.cron is None:
            return super().schedule_def
        return cron_schedule(self.job, self.partitions, self.cron, self.schedule.description)


def narrative_model(spec: AnalysisSpec) -> type[Narrative]:
    """The answer's schema: a summary and findings with the declared extra fields."""
    extra = {
        field.name: (FIELD_TYPES[field.type], Field(description=field.description))
        for field in spec.findings.fields
    }
    title = "".join(part.capitalize() for part in spec.name.split("_"))
    finding: type[BaseModel] = create_model(f"{title}Finding", __base__=Finding, **extra)
    return create_model(
        f"{title}Note",
        __base__=Narrative,
        findings=(list[finding], Field(max_length=spec.findings.max)),
    )


def prompt_version(spec: AnalysisSpec, instructions: str, schema: type[BaseModel]) -> str:
    """The declared version plus a digest of the prompt text and the answer's schema: an
    edited prompt file is a new question even if the version was not bumped."""
    text = instructions + repr(sorted(schema.model_json_schema().items()))
    return f"{spec.prompt.version}+{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def known_subjects(metrics: dict[str, Any]) -> set[str]:
    """The names a finding may be about: metric names, their columns and text values."""
    names = set(metrics)
    for rows in metrics.values():
        for row in rows if isinstance(rows, list) else []:
            names.update(row)
            names.update(str(v) for v in row.values() if isinstance(v, str))
    return names


def offline_narrative(data: Mapping[str, Any]) -> Narrative:
    """A deterministic summary from the metrics, for when no LLM is configured."""
    metrics = dict(data["metrics"])
    coverage = metrics.pop("coverage")
    figures = []
    for name, rows in metrics.items():
        if len(rows) == 1:
            figures += [f"{column} {value}" for column, value in rows[0].items()]
        else:
            figures.append(f"{name}: {len(rows)} row(s)")
    summary = f"{coverage['rows_read']} input row(s) in the window; " + ", ".join(figures) + "."
    return Narrative(summary=summary[:1500], findings=[])


def no_rows_problem(record: dict) -> list[str]:
    rows = record["metrics"].get("coverage", {}).get("rows_read")
    return ["no input rows read"] if rows == 0 else []


def cron_schedule(
    job: Any, partitions_def: TimeWindowPartitionsDefinition, cron: str, description: str
) -> ScheduleDefinition:
    """A declared cron: each tick requests the newest complete window (run_key = window)."""

    @schedule(
        name=f"{job.name}_schedule",
        cron_schedule=cron,
        job=job,
        execution_timezone=partitions_def.timezone,
        description=description,
    )
    def _tick(context: ScheduleEvaluationContext):
        key = partitions_def.get_last_partition_key(current_time=context.scheduled_execution_time)
        if key is None:
            return SkipReason("no complete window yet")
        return RunRequest(run_key=key, partition_key=key)

    return _tick


def cron_lag(partitions_def: TimeWindowPartitionsDefinition, cron: str) -> timedelta:
    """The longest time from a window's end to the cron's next tick, over the first
    windows: catch-up leaves a window to the schedule for at least that long."""
    from dagster._utils.schedules import cron_string_iterator

    lags = []
    start = partitions_def.start
    for key in partitions_def.get_partition_keys(current_time=start + timedelta(days=400))[:24]:
        end = partitions_def.time_window_for_partition_key(key).end
        ticks = cron_string_iterator(end.timestamp(), cron, partitions_def.timezone)
        tick: datetime = next(ticks)
        lags.append(tick - end)
    return max(lags, default=parse_duration("1h"))
