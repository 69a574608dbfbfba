"""Catch-up: run the windows the scheduler missed.

Dagster's scheduler does not replay ticks missed while the daemon was down, even for
partitioned schedules (dagster-io/dagster#10335). The sensor built here looks back over a
catch-up window and launches every partition whose schedule tick has passed but whose
report was never materialised, oldest first, with run_key = partition key, so a window
is launched by it at most once. The runs target the analysis' own job, so its assets'
pool still keeps two runs of one analysis from overlapping.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from dagster import (
    AssetsDefinition,
    AssetSpec,
    DagsterInstance,
    DagsterRunStatus,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    PartitionKeyRange,
    RunRequest,
    RunsFilter,
    ScheduleDefinition,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    TimeWindow,
    TimeWindowPartitionsDefinition,
    sensor,
)
from dateutil.relativedelta import relativedelta

from agent_reports.core import settings
from agent_reports.ops import ClockResource

# The look-back per partition grain when no AGENT_REPORTS_CATCHUP_WINDOW_<ANALYSIS> is set.
DEFAULT_WINDOWS = {
    "HOURLY": relativedelta(hours=48),
    "DAILY": relativedelta(days=3),
    "WEEKLY": relativedelta(weeks=2),
    "MONTHLY": relativedelta(months=2),
}
DEFAULT_MAX_RUNS_PER_TICK = 4
# A window is left to its schedule for this long after the tick: the scheduler daemon
# may launch a few seconds late, and the two must not both launch the same window.
DEFAULT_GRACE = timedelta(minutes=15)
IN_FLIGHT = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]
PARTITION_TAG = "dagster/partition"
RANGE_TAGS = ("dagster/asset_partition_range_start", "dagster/asset_partition_range_end")
CATCHUP_TAG = "agent_reports/catchup"

_DURATION = re.compile(r"^\s*(\d+)\s*(h|d|w|mo)\s*$")
_UNITS = {"h": "hours", "d": "days", "w": "weeks", "mo": "months"}


@dataclass(frozen=True)
class CatchUp:
    """One analysis as the catch-up sensor sees it.

    `due_after_end` is when the analysis' schedule requests a window, relative to the
    window's end (market: 6 h; the briefing requests its New York day at 09:00 of that
    day, 15 h before the day ends: -15 h). A test checks each against its schedule.
    """

    analysis: str
    job: Any  # the define_asset_job result (its class is not public)
    report: AssetsDefinition | AssetSpec  # only its key and partitions are read
    schedule: ScheduleDefinition
    due_after_end: timedelta

    @property
    def partitions_def(self) -> TimeWindowPartitionsDefinition:
        partitions_def = self.report.partitions_def
        if not isinstance(partitions_def, TimeWindowPartitionsDefinition):
            raise TypeError(f"{self.analysis}: catch-up needs time-window partitions")
        return partitions_def

    @property
    def sensor_name(self) -> str:
        return f"{self.analysis}_catchup_sensor"


def parse_duration(text: str) -> relativedelta:
    """`72h`, `3d`, `2w` or `2mo` (calendar months); `0d` turns catch-up off."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"a catch-up window looks like 72h, 3d, 2w or 2mo, not {text!r}")
    return relativedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def catchup_window(spec: CatchUp) -> relativedelta:
    """AGENT_REPORTS_CATCHUP_WINDOW_<ANALYSIS>, else the default for the partition grain."""
    override = settings.env(f"AGENT_REPORTS_CATCHUP_WINDOW_{spec.analysis.upper()}")
    if override:
        return parse_duration(override)
    grain = spec.partitions_def.schedule_type
    if grain is None or grain.name not in DEFAULT_WINDOWS:
        raise ValueError(f"{spec.analysis}: no default catch-up window; set the env variable")
    return DEFAULT_WINDOWS[grain.name]


def max_runs_per_tick() -> int:
    """AGENT_REPORTS_CATCHUP_MAX_RUNS_PER_TICK: bounds what one tick puts in the queue."""
    return int(settings.env("AGENT_REPORTS_CATCHUP_MAX_RUNS_PER_TICK", "") or 0) or (
        DEFAULT_MAX_RUNS_PER_TICK
    )


def due_partitions(
    spec: CatchUp, now: datetime, window: relativedelta, grace: timedelta = DEFAULT_GRACE
) -> list[str]:
    """Partitions whose window ended within `window` before `now` and whose schedule tick
    (plus `grace`) has passed, oldest first."""
    partitions_def = spec.partitions_def
    lower = now - window
    # Generous bounds (a month either side); the exact tests are per window below.
    query = TimeWindow(lower - timedelta(days=32), now + timedelta(days=32))
    keys = []
    for key in partitions_def.get_partition_keys_in_time_window(query):
        window_of_key = partitions_def.time_window_for_partition_key(key)
        if window_of_key.end > lower and window_of_key.end + spec.due_after_end + grace <= now:
            keys.append(key)
    return keys


def partitions_in_flight(spec: CatchUp, instance: DagsterInstance) -> set[str]:
    """Partitions of the report that a queued or running run will produce: scheduled and
    UI runs of the job (partition tag), and backfill runs (a partition range)."""
    busy: set[str] = set()
    for record in instance.get_run_records(RunsFilter(statuses=IN_FLIGHT)):
        run = record.dagster_run
        targets_report = run.job_name == spec.job.name or (
            run.asset_selection is not None and spec.report.key in run.asset_selection
        )
        if not targets_report:
            continue
        if PARTITION_TAG in run.tags:
            busy.add(run.tags[PARTITION_TAG])
        elif all(tag in run.tags for tag in RANGE_TAGS):
            start, end = (run.tags[tag] for tag in RANGE_TAGS)
            busy.update(
                spec.partitions_def.get_partition_keys_in_range(PartitionKeyRange(start, end))
            )
    return busy


def keys_already_launched(spec: CatchUp, instance: DagsterInstance) -> set[str]:
    """Run keys this sensor used before: the daemon would drop them anyway; dropping them
    here keeps the sensor's own answer free of duplicates too."""
    runs = instance.get_run_records(RunsFilter(tags={"dagster/sensor_name": spec.sensor_name}))
    return {
        r.dagster_run.tags["dagster/run_key"]
        for r in runs
        if "dagster/run_key" in r.dagster_run.tags
    }


def missing_partitions(
    spec: CatchUp, instance: DagsterInstance, now: datetime, window: relativedelta
) -> list[str]:
    """Due partitions with no materialised report, no run in flight, no failed run (a
    failure has already alerted and a crash is retried by run_retries: relaunching bad
    input would only fail again), and not launched by this sensor before; oldest first."""
    due = due_partitions(spec, now, window)
    if not due:
        return []
    # None when the report has never been planned or materialised at all.
    status = instance.get_status_by_partition(spec.report.key, due, spec.partitions_def) or {}
    skip = partitions_in_flight(spec, instance) | keys_already_launched(spec, instance)
    return [key for key in due if status.get(key) is None and key not in skip]


def schedule_is_running(context: SensorEvaluationContext, schedule: ScheduleDefinition) -> bool:
    """Whether the analysis' schedule is on: its stored state, else its default status.

    Only a running schedule misses ticks: a stopped one means the analysis is paused, and
    catching it up would undo the pause.
    """
    for state in context.instance.all_instigator_state():
        if state.instigator_type.value != "SCHEDULE" or state.instigator_name != schedule.name:
            continue
        if (
            context.repository_name
            and state.repository_selector.repository_name != context.repository_name
        ):
            continue
        if state.status.value != "DECLARED_IN_CODE":
            return state.is_running
    return schedule.default_status == DefaultScheduleStatus.RUNNING


def build_catchup_sensor(spec: CatchUp, minimum_interval_seconds: int = 60) -> SensorDefinition:
    """The catch-up sensor for one analysis.

    It starts RUNNING: a missed window is exactly what nobody notices, so a safeguard
    that must first be switched on in the UI would itself be silently missing after a
    fresh deploy or an instance wipe. It acts only while the analysis' schedule is on, so
    a stopped schedule (the default) keeps the analysis paused.
    """

    @sensor(
        name=spec.sensor_name,
        job=spec.job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description=f"Launches {spec.analysis} windows missed while the daemon was down "
        "(oldest first, run_key = partition key), while its schedule is on.",
    )
    def _catchup(context: SensorEvaluationContext, clock: ClockResource):
        if not schedule_is_running(context, spec.schedule):
            return SkipReason(f"{spec.schedule.name} is stopped: nothing to catch up")
        now = clock.now()
        missing = missing_partitions(spec, context.instance, now, catchup_window(spec))
        if not missing:
            return SkipReason(f"no missed {spec.analysis} window as of {now.isoformat()}")
        batch = missing[: max_runs_per_tick()]
        context.log.info(
            f"{len(missing)} missed window(s); launching {batch}"
            + (
                f", the other {len(missing) - len(batch)} on later ticks"
                if missing[len(batch) :]
                else ""
            )
        )
        return SensorResult(
            run_requests=[
                RunRequest(run_key=key, partition_key=key, tags={CATCHUP_TAG: "true"})
                for key in batch
            ]
        )

    return _catchup


def build_catchup_sensors(specs: Sequence[CatchUp]) -> list[SensorDefinition]:
    return [build_catchup_sensor(spec) for spec in specs]


# ----------------------------------------------------------------------------- late lines

LATE_TAG = "agent_reports/late_lines"
LATE_SENSOR = "late_log_lines_sensor"


def late_rerun_enabled() -> bool:
    """AGENT_REPORTS_LATE_LINES_RERUN=true: re-run windows whose logs grew after their
    report (default: only list them)."""
    value = (settings.env("AGENT_REPORTS_LATE_LINES_RERUN", "false") or "").strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(f"AGENT_REPORTS_LATE_LINES_RERUN must be true or false, not {value!r}")
    return value in ("true", "1", "yes")


def _reported_at(spec: CatchUp, instance: DagsterInstance, keys: list[str]) -> dict[str, float]:
    """When each partition's report was last materialised (partitions never reported are
    absent: their first run reads the late lines anyway)."""
    from dagster import AssetRecordsFilter

    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=spec.report.key, asset_partitions=keys), limit=10 * len(keys)
    ).records
    latest: dict[str, float] = {}
    for record in records:
        key = record.partition_key
        if key is not None:
            latest[key] = max(latest.get(key, 0.0), record.timestamp)
    return latest


@dataclass(frozen=True)
class LateWindow:
    """A reported window whose logs got `late_lines` (of `lines`) after its report."""

    key: str
    arrived_at: float
    late_lines: int
    lines: int

    def __str__(self) -> str:
        return f"{self.key} (+{self.late_lines} of {self.lines} lines)"


def late_min_share() -> float:
    """AGENT_REPORTS_LATE_LINES_MIN_SHARE: the share of a window's lines that must be late
    for a re-run (default 0.01: a long request logged after its hour does not re-run it)."""
    text = settings.env("AGENT_REPORTS_LATE_LINES_MIN_SHARE", "0.01") or "0.01"
    try:
        share = float(text)
    except ValueError:
        share = -1.0
    if not 0 <= share <= 1:
        raise ValueError(f"AGENT_REPORTS_LATE_LINES_MIN_SHARE must be in [0, 1], not {text!r}")
    return share


def _epoch_hour(moment: datetime) -> int:
    return int(moment.timestamp()) // 3600


def late_windows(
    spec: CatchUp, instance: DagsterInstance, store: Any, changed_hours: dict[int, float]
) -> list[LateWindow]:
    """The reported windows of `spec` with lines stored after their report (a log file
    delivered late), with how many."""
    arrived: dict[str, float] = {}
    for hour, stored_at in changed_hours.items():
        start = datetime.fromtimestamp(hour * 3600, tz=UTC)
        window = TimeWindow(start, start + timedelta(hours=1))
        for key in spec.partitions_def.get_partition_keys_in_time_window(window):
            arrived[key] = max(arrived.get(key, 0.0), stored_at)
    if not arrived:
        return []
    reported = _reported_at(spec, instance, sorted(arrived))
    late = []
    for key, at in sorted(arrived.items()):
        if key in reported and at > reported[key]:
            window = spec.partitions_def.time_window_for_partition_key(key)
            lines = store.lines_stored_after(
                _epoch_hour(window.start), _epoch_hour(window.end), reported[key]
            )
            late.append(LateWindow(key, at, *lines))
    return late


def build_late_lines_sensor(specs: Sequence[CatchUp], minimum_interval_seconds: int = 120):
    """Lists the windows whose access logs got lines after their report was written (a log
    file delivered late) and, with AGENT_REPORTS_LATE_LINES_RERUN=true, runs them again:
    new input, so a new fingerprint and a new report (run_key: window + arrival)."""
    from agent_reports.core.resources import DataSourceResource

    @sensor(
        name=LATE_SENSOR,
        jobs=[spec.job for spec in specs],
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description="Windows whose access logs grew after their report: listed, and re-run "
        "when AGENT_REPORTS_LATE_LINES_RERUN=true.",
    )
    def _late(context: SensorEvaluationContext, source: DataSourceResource):
        return late_lines_tick(context, specs, source)

    return _late


def late_lines_tick(
    context: SensorEvaluationContext, specs: Sequence[CatchUp], source: Any
) -> SensorResult | SkipReason:
    """One evaluation: the store's hours changed since the cursor, matched to reports."""
    from agent_reports.core.log_store import folder_store
    from agent_reports.core.sources import FileSource

    files = source.get()
    folder = getattr(files, "data_dir", None)
    if not isinstance(files, FileSource) or folder is None or not (folder / "logs").is_dir():
        return SkipReason("no log store: the source is not `files` or has no logs folder")
    store = folder_store(folder / "logs")
    since = float(context.cursor or 0)
    changed = store.hours_changed_since(since)
    if not changed:
        return SkipReason("no lines stored since the last look")
    cursor = str(max(changed.values()))
    rerun, share = late_rerun_enabled(), late_min_share()
    requests, listed = [], []
    for spec in specs:
        busy = partitions_in_flight(spec, context.instance)
        for window in late_windows(spec, context.instance, store, changed):
            listed.append(f"{spec.analysis} {window}")
            big_enough = window.late_lines >= max(1.0, share * window.lines)
            if rerun and big_enough and window.key not in busy:
                requests.append(
                    RunRequest(
                        run_key=f"late:{spec.analysis}:{window.key}:{window.arrived_at:.6f}",
                        job_name=spec.job.name,
                        partition_key=window.key,
                        tags={CATCHUP_TAG: "true", LATE_TAG: "true"},
                    )
                )
    if not listed:
        return SensorResult(skip_reason="no late lines for a reported window", cursor=cursor)
    message = f"late log lines for {len(listed)} reported window(s): {', '.join(listed)}"
    context.log.warning(message)
    if not requests:
        note = "" if rerun else " (set AGENT_REPORTS_LATE_LINES_RERUN=true to re-run them)"
        return SensorResult(skip_reason=message + note, cursor=cursor)
    return SensorResult(run_requests=requests, cursor=cursor)
