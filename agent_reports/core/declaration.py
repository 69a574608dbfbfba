"""One declaration per analysis, and the one function that turns it into Dagster objects.

An `Analysis` states what the project needs to schedule, guard and audit one analysis: its
partitions (the schedule windows), its schedule and when that requests a window, its
pool, its deadline, catch-up, owner and cadence, and the assets it consists of. A built-in
analysis declares it in its folder's analysis.yaml (`declare`); a component may build one
directly.
`analysis_definitions(analysis)` builds from it the job, the schedule, the catch-up
sensor, the report's freshness policy and the catalog (owner, tags); definitions.py
merges the results of every declaration.

The stale-window alert (ops/alerts.py) and the monthly audit (compliance/assets.py) find
the declared analyses in the loaded code location itself: the builder writes each
report's deadline into its asset metadata (`REPORT_DEADLINE`), and `declared_reports`
reads them back. So an analysis added to the list, or built by a YAML component through
this same function, is alerted on and audited with no further edit; its pool gives it
the run queue's guard and `with_run_locks` its run lock.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from dagster import (
    AnchorBasedFilePathMapping,
    AssetChecksDefinition,
    AssetKey,
    AssetsDefinition,
    AssetSelection,
    AssetSpec,
    BackfillPolicy,
    DailyPartitionsDefinition,
    Definitions,
    HourlyPartitionsDefinition,
    MetadataValue,
    MonthlyPartitionsDefinition,
    RepositoryDefinition,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    TimeWindowPartitionsDefinition,
    WeeklyPartitionsDefinition,
    apply_freshness_policy,
    build_schedule_from_partitioned_job,
    define_asset_job,
    link_code_references_to_git,
    load_asset_checks_from_package_module,
    load_assets_from_package_module,
    schedule,
    with_source_code_references,
)

from agent_reports.core import settings
from agent_reports.core.deadlines import Deadline
from agent_reports.ops.catchup import CatchUp, build_catchup_sensor
from agent_reports.ops.freshness import policy_for

DECLARATION_FILE = "analysis.yaml"
# Report asset metadata written by the builder, read by the alerts and the audit.
REPORT_DEADLINE = "agent_reports/deadline"
REPORT_AUDITED = "agent_reports/audited"
DECLARED_RESOURCE = "declared"  # with_declared's resource: the list of DeclaredReport


@dataclass(frozen=True)
class Schedule:
    """When an analysis runs.

    By default built from the partitioned job (Dagster's `build_schedule_from_partitioned_job`)
    at `minute`/`hour`/`day_of_week`/`day_of_month`: each tick requests the newest complete
    window, so the cron cannot drift from the partition grain. With `cron` instead, an own
    cron in the partitions' timezone whose ticks each request the window they fall in (the
    briefing: 09:00 New York, Monday to Friday, requests that same day).
    """

    description: str
    minute: int = 0
    hour: int | None = None
    day_of_week: int | None = None
    day_of_month: int | None = None
    cron: str | None = None

    def time_of_day(self) -> timedelta:
        """The tick's wall-clock time after midnight (the UI's cron freshness lower bound)."""
        if self.cron:
            minute, hour = self.cron.split()[:2]
            return timedelta(hours=int(hour), minutes=int(minute))
        return timedelta(hours=self.hour or 0, minutes=self.minute)


@dataclass(frozen=True)
class Analysis:
    """One analysis, declared once (a built-in one in its folder's analysis.yaml).

    `lag` is when the schedule requests a window relative to the window's end (market: 6 h
    after the day; the briefing requests its New York day at 09:00 of that day: -15 h); the
    catch-up sensor launches a missed window once that has passed (test_ops_catchup checks
    it against the schedule). `deadline` None: no freshness policy, alert or audit (the
    ingest job). `package` names the package whose modules hold the analysis' assets and
    checks (those in its group); `assets` adds assets and checks given directly (a YAML
    component's). `report` is the report asset's key, `<name>_report` by default.
    """

    name: str
    partitions: TimeWindowPartitionsDefinition
    schedule: Schedule
    lag: timedelta
    owner: str
    cadence: str
    description: str  # the job's, shown in the UI
    pool: str | None = None
    deadline: Deadline | None = None
    catchup: bool = True
    late_lines: bool = False  # re-run windows whose access logs grew after the report
    audited: bool = True  # counted in the compliance audit's coverage
    recipients_variable: str | None = None  # env var: comma-separated report recipients
    package: str | None = None
    assets: tuple[AssetsDefinition | AssetChecksDefinition, ...] = ()
    report: str | None = None

    @property
    def report_key(self) -> AssetKey:
        return AssetKey.from_user_string(self.report or f"{self.name}_report")

    @property
    def job_name(self) -> str:
        return f"{self.name}_job"

    def asset_args(self) -> dict[str, Any]:
        """The `@asset` arguments every asset of the analysis shares: its group (the job's
        selection), partitions, pool, and one run per backfill range."""
        return {
            "group_name": self.name,
            "partitions_def": self.partitions,
            "pool": self.pool,
            "backfill_policy": BackfillPolicy.single_run(),
        }

    def recipients(self) -> list[str]:
        """The report's recipients from `recipients_variable`, read at run time."""
        text = settings.env(self.recipients_variable, "") if self.recipients_variable else ""
        return sorted({address.strip() for address in (text or "").split(",") if address.strip()})

    @cached_property
    def job(self) -> Any:  # define_asset_job's result (its class is not public)
        return define_asset_job(
            name=self.job_name,
            selection=AssetSelection.groups(self.name),
            partitions_def=self.partitions,
            description=self.description,
        )

    @cached_property
    def schedule_def(self) -> ScheduleDefinition:
        spec = self.schedule
        if spec.cron is None:
            return build_schedule_from_partitioned_job(
                self.job,
                minute_of_hour=spec.minute,
                hour_of_day=spec.hour,
                day_of_week=spec.day_of_week,
                day_of_month=spec.day_of_month,
                description=spec.description,
            )
        return _cron_schedule(self, spec.cron)

    def catchup_spec(self) -> CatchUp:
        """The analysis as the catch-up and late-lines sensors see it."""
        report = AssetSpec(self.report_key, partitions_def=self.partitions)
        return CatchUp(self.name, self.job, report, self.schedule_def, self.lag)

    def load(self) -> tuple[list[AssetsDefinition], list[AssetChecksDefinition]]:
        """The analysis' assets (those in its group) and the checks on them."""
        found: list[Any] = list(self.assets)
        if self.package:
            package = importlib.import_module(self.package)
            found += load_assets_from_package_module(package)
            found += load_asset_checks_from_package_module(package)
        assets = _unique(
            a
            for a in found
            if isinstance(a, AssetsDefinition)
            and not isinstance(a, AssetChecksDefinition)
            and self.name in a.group_names_by_key.values()
        )
        keys = {key for a in assets for key in a.keys}
        checks = _unique(
            c
            for c in found
            if isinstance(c, AssetChecksDefinition)
            and all(k.asset_key in keys for k in c.check_keys)
        )
        return assets, checks

    def catalog_spec(self, spec: AssetSpec) -> AssetSpec:
        """Owner and tags on every asset; freshness and the deadline on the report."""
        spec = spec.merge_attributes(
            owners=[self.owner], tags={"analysis": self.name, "cadence": self.cadence}
        )
        if spec.key != self.report_key or self.deadline is None:
            return spec
        policy = policy_for(self.deadline, self.schedule.time_of_day())
        return apply_freshness_policy(spec, policy).merge_attributes(
            metadata={
                REPORT_DEADLINE: MetadataValue.json(self.deadline.to_dict()),
                REPORT_AUDITED: self.audited,
            }
        )


# The partitions of every analysis declared or built in this process, by name: what a
# report that groups other analyses' windows into ranges (the audit) reads to find the
# next window.
_BUILT: dict[str, TimeWindowPartitionsDefinition] = {}


def declared_partitions(name: str) -> TimeWindowPartitionsDefinition | None:
    return _BUILT.get(name)


def analysis_definitions(analysis: Analysis) -> Definitions:
    """Everything one declaration makes: assets and checks, job, schedule, catch-up sensor,
    the report's freshness policy and deadline, the catalog's owner and tags."""
    _BUILT[analysis.name] = analysis.partitions
    settings.register_analysis(analysis.name)
    assets, checks = analysis.load()
    reports = [a for a in assets if analysis.report_key in a.keys]
    if len(reports) != 1:
        raise ValueError(f"{analysis.name}: no asset {analysis.report_key.to_user_string()}")
    sensors = [build_catchup_sensor(analysis.catchup_spec())] if analysis.catchup else []
    defs = Definitions(
        assets=with_code_references(assets),
        asset_checks=checks,
        jobs=[analysis.job],
        schedules=[analysis.schedule_def],
        sensors=sensors,
    )
    return defs.map_asset_specs(func=analysis.catalog_spec)


@dataclass(frozen=True)
class DeclaredReport:
    """A declared analysis as the loaded code location shows it (alerts, audit)."""

    analysis: str
    report_key: AssetKey
    partitions_def: TimeWindowPartitionsDefinition
    deadline: Deadline
    audited: bool

    @property
    def job_name(self) -> str:
        return f"{self.analysis}_job"


def declared_reports(source: RepositoryDefinition | Definitions) -> list[DeclaredReport]:
    """Every report asset in the code location that carries a declared deadline, in the
    order the code location defines them."""
    if isinstance(source, RepositoryDefinition):
        assets: Any = source.assets_defs_by_key.values()
    else:
        assets = source.assets or []
    found = {}
    for assets_def in assets:
        if not isinstance(assets_def, AssetsDefinition):
            continue
        for key, spec in assets_def.specs_by_key.items():
            if REPORT_DEADLINE not in spec.metadata:
                continue
            name = assets_def.group_names_by_key[key]
            deadline = Deadline.from_dict(_value(spec.metadata[REPORT_DEADLINE]))
            audited = bool(_value(spec.metadata[REPORT_AUDITED]))
            partitions = assets_def.partitions_def
            found[name] = DeclaredReport(name, key, partitions, deadline, audited)
    return list(found.values())


def with_declared(defs: Definitions) -> Definitions:
    """The same definitions with the resource `declared`: the declared reports they hold,
    which the audit reads (a step has no repository to look in when its job is executed
    in process). Apply it to the code location's whole definitions."""
    return Definitions.merge(
        defs, Definitions(resources={DECLARED_RESOURCE: declared_reports(defs)})
    )


def with_code_references(assets: list) -> list:
    """Each asset linked to its source: the local file, or the file in the repository when
    AGENT_REPORTS_GIT_URL (and AGENT_REPORTS_GIT_BRANCH, default main) name it. Read when
    the code location loads: they describe the code, they are not run settings or secrets."""
    assets = with_source_code_references(assets)
    git_url = settings.env("AGENT_REPORTS_GIT_URL")
    if not git_url:
        return assets
    return link_code_references_to_git(
        assets,
        git_url=git_url,
        git_branch=settings.env("AGENT_REPORTS_GIT_BRANCH", "main") or "main",
        file_path_mapping=AnchorBasedFilePathMapping(
            local_file_anchor=Path(__file__).parents[1],
            file_anchor_path_in_repository="agent_reports",
        ),
    )


def window_at(partitions: TimeWindowPartitionsDefinition, moment: datetime) -> str | None:
    """The partition whose window holds `moment`; None outside the partitions."""
    key = partitions.get_partition_key_for_timestamp(moment.timestamp())
    if not partitions.has_partition_key(key):
        return None
    window = partitions.time_window_for_partition_key(key)
    return key if window.start <= moment < window.end else None


def _cron_schedule(analysis: Analysis, cron: str) -> ScheduleDefinition:
    partitions, job = analysis.partitions, analysis.job

    @schedule(
        cron_schedule=cron,
        job=job,
        execution_timezone=partitions.timezone,
        name=f"{job.name}_schedule",
        description=analysis.schedule.description,
    )
    def _tick(context: ScheduleEvaluationContext) -> RunRequest | SkipReason:
        """The window the tick falls in (run_key = its partition key)."""
        moment = context.scheduled_execution_time
        key = window_at(partitions, moment)
        if key is None:
            return SkipReason(f"{moment.isoformat()} is in no {analysis.name} partition")
        return job.run_request_for_partition(partition_key=key, run_key=key)

    return _tick


def _unique(items: Any) -> list:
    seen: dict[int, Any] = {}
    for item in items:
        seen.setdefault(id(item), item)
    return list(seen.values())


def _value(entry: Any) -> Any:
    return entry.value if hasattr(entry, "value") else entry


# --------------------------------------------------------------------------- analysis.yaml

GRAINS = {
    "hourly": HourlyPartitionsDefinition,
    "daily": DailyPartitionsDefinition,
    "weekly": WeeklyPartitionsDefinition,
    "monthly": MonthlyPartitionsDefinition,
}
FIELDS = {
    "": {"name", "description", "owner", "cadence", "pool", "catchup", "late_lines", "audited",
         "recipients_variable", "report", "partitions", "schedule", "deadline"},
    "partitions": {"grain", "start", "timezone", "day_offset", "exclusions", "end_offset"},
    "schedule": {"minute", "hour", "day_of_week", "day_of_month", "cron", "lag", "description"},
    "deadline": {"after_end", "local_time", "timezone", "weekdays"},
}  # fmt: skip
REQUIRED = ("name", "description", "owner", "cadence", "partitions", "schedule")
_DURATION = re.compile(r"^\s*(-?\d+)\s*(m|h|d)\s*$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


class DeclarationError(ValueError):
    """A declaration file that does not describe an analysis: names the file, line and field."""


def declare(package: str) -> Analysis:
    """The analysis declared in the package's analysis.yaml (its assets: the package's)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DeclarationError(f"{package} is not a package")
    path = Path(next(iter(spec.submodule_search_locations))) / DECLARATION_FILE
    analysis = read_declaration(path, package=package)
    _BUILT[analysis.name] = analysis.partitions
    settings.register_analysis(analysis.name)
    return analysis


def read_declaration(path: Path, **given: Any) -> Analysis:
    """An `Analysis` from a YAML file; `given` fields (package, assets) are added as is."""
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark else 0
        raise DeclarationError(f"{path}:{line}: not YAML: {error}") from None
    lines: dict[str, int] = {}
    _record_lines(node, "", lines)
    return analysis_from_mapping(yaml.safe_load(text) or {}, f"{path}", lines, **given)


def analysis_from_mapping(
    data: Mapping[str, Any], source: str, lines: Mapping[str, int] | None = None, **given: Any
) -> Analysis:
    """An `Analysis` from plain data (an analysis.yaml's), errors naming `source`, the line
    (`lines`: dotted field → line) and the field."""
    lines = lines or {}

    def fail(field: str, problem: str) -> DeclarationError:
        line = lines.get(field) or lines.get(field.rpartition(".")[0])
        return DeclarationError(f"{source}{f':{line}' if line else ''}: {field}: {problem}")

    _check_fields(data, "", fail)
    for section in ("partitions", "schedule", "deadline"):
        if section in data:
            if not isinstance(data[section], Mapping):
                raise fail(section, "must be a mapping")
            _check_fields(data[section], section, fail)
    missing = [field for field in REQUIRED if field not in data]
    if missing:
        raise fail(missing[0], "missing")
    schedule = dict(data["schedule"])
    lag = _duration(schedule.pop("lag", "0m"), "schedule.lag", fail)
    try:
        return Analysis(
            name=data["name"],
            partitions=_partitions(data["partitions"], fail),
            schedule=Schedule(**schedule),
            lag=lag,
            owner=data["owner"],
            cadence=data["cadence"],
            description=data["description"],
            pool=data.get("pool"),
            deadline=_deadline(data["deadline"], fail) if "deadline" in data else None,
            catchup=data.get("catchup", True),
            late_lines=data.get("late_lines", False),
            audited=data.get("audited", True),
            recipients_variable=data.get("recipients_variable"),
            report=data.get("report"),
            **given,
        )
    except TypeError as error:
        raise fail("schedule", str(error)) from None


def _record_lines(node: Any, prefix: str, lines: dict[str, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            field = f"{prefix}{key.value}"
            lines[field] = key.start_mark.line + 1
            _record_lines(value, field + ".", lines)


def _check_fields(data: Mapping[str, Any], section: str, fail: Any) -> None:
    prefix = f"{section}." if section else ""
    for field in data:
        if field not in FIELDS[section]:
            allowed = ", ".join(sorted(FIELDS[section]))
            raise fail(f"{prefix}{field}", f"unknown field (expected one of {allowed})")


def _duration(text: Any, field: str, fail: Any) -> timedelta:
    match = _DURATION.match(str(text))
    if not match:
        raise fail(field, f"a duration looks like 5m, 6h, -15h or 8d, not {text!r}")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def _partitions(data: Mapping[str, Any], fail: Any) -> TimeWindowPartitionsDefinition:
    args = dict(data)
    grain = args.pop("grain", None)
    if grain not in GRAINS:
        raise fail("partitions.grain", f"one of {', '.join(GRAINS)}, not {grain!r}")
    if "start" not in args:
        raise fail("partitions.start", "missing")
    args["start_date"] = str(args.pop("start"))
    try:
        return GRAINS[grain](**args)
    except Exception as error:  # Dagster's own message says what is wrong with the value
        raise fail("partitions", str(error).splitlines()[0]) from None


def _deadline(data: Mapping[str, Any], fail: Any) -> Deadline:
    args = dict(data)
    try:
        if "after_end" in args:
            args["after_end"] = _duration(args["after_end"], "deadline.after_end", fail)
        if "local_time" in args:
            args["local_time"] = time.fromisoformat(str(args["local_time"]))
        return Deadline(**args)
    except ValueError as error:
        if isinstance(error, DeclarationError):
            raise
        raise fail("deadline", str(error)) from None
