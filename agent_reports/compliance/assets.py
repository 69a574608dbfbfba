"""Compliance assets: the instance's history and the ledger → coverage and deliveries; the
month's access logs → policy findings; both → the audit report, per UTC month.

Each asset handles every partition of its run (one month when scheduled, several in a
single-run backfill) and returns `{partition_key: value}`. History is read through the
instance's public API (materialisation records, run records) up to the month's end.
"""

from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import Path

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetRecordsFilter,
    DagsterInstance,
    PartitionKeyRange,
    ResourceParam,
    RunsFilter,
    TimeWindow,
    TimeWindowPartitionsDefinition,
    asset,
)

from agent_reports.compliance import prompts, tools
from agent_reports.compliance.analysis import (
    NOT_SCHEDULED,
    Materialization,
    PolicyConfig,
    PolicyScan,
    RunAttempt,
    ScheduleHistory,
    Window,
    coverage,
    deliveries,
    delivery_counts,
    llm_quality_and_cost,
    log_coverage,
    parse_allowlist,
    parse_prefixes,
    problem_windows,
    window_ranges,
    windows_due,
)
from agent_reports.compliance.logs import ReadStats, month_records
from agent_reports.compliance.partitions import COMPLIANCE, compliance_partitions
from agent_reports.core import settings
from agent_reports.core.analyst import AnalystAnswer
from agent_reports.core.charts import stacked_bars
from agent_reports.core.declaration import DeclaredReport, declared_partitions, declared_reports
from agent_reports.core.publishing import report_asset, report_from_answer, report_notes
from agent_reports.core.quality import LOW_SCORE
from agent_reports.core.reports import Chart, Note, Report, Table, notes_at
from agent_reports.core.resources import DataSourceResource, DeliveryResource
from agent_reports.core.sources import InputError

COMMON = COMPLIANCE.asset_args()
# Windows due in a month started at most this long before it (churn: a week + 8 days).
LOOKBACK = timedelta(days=32)
PAGE = 1000
PARTITION_TAG = "dagster/partition"
RANGE_TAGS = ("dagster/asset_partition_range_start", "dagster/asset_partition_range_end")


def _months(context: AssetExecutionContext) -> dict[str, TimeWindow]:
    return {
        key: compliance_partitions.time_window_for_partition_key(key)
        for key in context.partition_keys
    }


def expected_windows(
    month: TimeWindow, analyses: list[DeclaredReport] | None = None
) -> list[Window]:
    """Every audited analysis' windows whose deadline falls in the month (default: the
    analyses this project's code location declares)."""
    if analyses is None:
        from agent_reports.definitions import defs  # the code location, loaded by now

        analyses = [d for d in declared_reports(defs) if d.audited]
    query = TimeWindow(month.start - LOOKBACK, month.end)
    windows = []
    for declared in analyses:
        partitions_def = declared.partitions_def
        for key in partitions_def.get_partition_keys_in_time_window(query):
            span = partitions_def.time_window_for_partition_key(key)
            windows.append(Window(declared.analysis, key, span.start, span.end, declared.deadline))
    return windows_due(windows, month.start, month.end)


def report_materializations(
    instance: DagsterInstance, declared: DeclaredReport, after: datetime, before: datetime
) -> list[Materialization]:
    """The analysis' report materialisations in [after, before), all pages."""
    records_filter = AssetRecordsFilter(
        asset_key=declared.report_key,
        after_timestamp=after.timestamp(),
        before_timestamp=before.timestamp(),
    )
    found, cursor = [], None
    while True:
        page = instance.fetch_materializations(
            records_filter, limit=PAGE, cursor=cursor, ascending=True
        )
        for record in page.records:
            metadata = record.asset_materialization.metadata
            degraded, score = metadata.get("degraded"), metadata.get("llm_quality_score")
            cost = metadata.get("llm_cost_usd")
            found.append(
                Materialization(
                    declared.analysis,
                    record.partition_key,
                    record.timestamp,
                    record.run_id,
                    bool(degraded.value) if degraded is not None else False,
                    score.value if score is not None else None,
                    cost.value if cost is not None else None,
                )
            )
        if not page.has_more:
            return found
        cursor = page.cursor


def _run_keys(tags: dict[str, str], partitions_def: TimeWindowPartitionsDefinition) -> tuple:
    if PARTITION_TAG in tags:
        return (tags[PARTITION_TAG],)
    if all(tag in tags for tag in RANGE_TAGS):
        key_range = PartitionKeyRange(*(tags[tag] for tag in RANGE_TAGS))
        return tuple(partitions_def.get_partition_keys_in_range(key_range))
    return ()


def analysis_runs(
    instance: DagsterInstance, after: datetime, analyses: list[DeclaredReport]
) -> list[RunAttempt]:
    """Runs created after `after` that targeted an audited analysis' report: its job, or
    an asset selection holding the report (UI materialisations, backfills)."""
    attempts = []
    for record in instance.get_run_records(RunsFilter(created_after=after)):
        run = record.dagster_run
        for declared in analyses:
            report = declared.report_key
            if run.job_name != declared.job_name and report not in (run.asset_selection or ()):
                continue
            attempts.append(
                RunAttempt(
                    declared.analysis,
                    run.run_id,
                    _run_keys(run.tags, declared.partitions_def),
                    run.status.value,
                    record.start_time,
                    int(run.tags.get("dagster/retry_number", 0)),
                    run.tags.get("dagster/parent_run_id"),
                )
            )
    return attempts


def _first_report(instance: DagsterInstance, analysis: str) -> float | None:
    records_filter = AssetRecordsFilter(asset_key=AssetKey(f"{analysis}_report"))
    page = instance.fetch_materializations(records_filter, limit=1, ascending=True)
    return page.records[0].timestamp if page.records else None


def _first_run(instance: DagsterInstance, analysis: str) -> float | None:
    records = instance.get_run_records(
        RunsFilter(job_name=f"{analysis}_job"), limit=1, order_by="create_timestamp", ascending=True
    )
    return records[0].create_timestamp.timestamp() if records else None


def schedule_history(
    instance: DagsterInstance, cutoff: datetime, analyses: list[str]
) -> dict[str, ScheduleHistory]:
    """Per audited analysis: its first run, report or schedule tick (ever: a first moment
    does not move), and, when its schedule is stopped now, its last tick before `cutoff`."""
    states = {}
    if instance.schedule_storage is not None:  # an ephemeral instance keeps no schedules
        states = {state.instigator_name: state for state in instance.all_instigator_state()}
    found = {}
    for analysis in analyses:
        state = states.get(f"{analysis}_job_schedule")
        ticks = []
        if state is not None:
            ticks = instance.get_ticks(
                state.instigator_origin_id, state.selector_id, before=cutoff.timestamp()
            )
        times = [t.timestamp for t in ticks]
        firsts = [_first_report(instance, analysis), _first_run(instance, analysis), *times]
        stopped = state is not None and state.status.value == "STOPPED" and times
        found[analysis] = ScheduleHistory(
            min((t for t in firsts if t is not None), default=None),
            max(times) if stopped else None,
        )
    return found


@asset(**COMMON, io_manager_key="range_io_manager")
def compliance_history(
    context: AssetExecutionContext,
    delivery: DeliveryResource,
    declared: ResourceParam[list[DeclaredReport]],
) -> dict[str, dict]:
    """Per month: each due window of each analysis classified from the instance's run and
    materialisation history (ok / late / missing / failed; degraded, re-run, retried),
    and the ledger's alerts and emails of the month."""
    ledger = delivery.ledger()
    try:
        entries = ledger.entries()
    finally:
        ledger.engine.dispose()
    # The analyses audited: every declared analysis of the code location that is not
    # exempt (the audit itself), with its report's partitions (the schedule windows).
    analyses, values = [d for d in declared if d.audited], {}
    names = [declared.analysis for declared in analyses]
    for key, month in _months(context).items():
        windows = expected_windows(month, analyses)
        after = min(w.start for w in windows) if windows else month.start
        mats = [
            m
            for declared in analyses
            for m in report_materializations(context.instance, declared, after, month.end)
        ]
        runs = analysis_runs(context.instance, after, analyses)
        history = schedule_history(context.instance, month.end, names)
        result = coverage(windows, mats, runs, month.end, history, names)
        sent = deliveries(entries, month.start, month.end)
        values[key] = {
            "coverage": result["per_analysis"],
            "problem_windows": problem_windows(result["windows"]),
            "deliveries": sent,
            "delivery_counts": delivery_counts(sent),
            "llm": llm_quality_and_cost(
                [m for m in mats if m.timestamp >= month.start.timestamp()], LOW_SCORE
            ),
        }
        context.add_asset_metadata(
            {
                "windows_due": len(windows),
                "problem_windows": len(values[key]["problem_windows"]),
                "deliveries": len(sent),
            },
            partition_key=key,
        )
    return values


def policy_config() -> PolicyConfig:
    """The allow-list and sensitive prefixes from the environment, read at run time."""
    return PolicyConfig(
        allowlist=parse_allowlist(settings.env("AGENT_REPORTS_COMPLIANCE_ALLOWLIST")),
        sensitive_prefixes=parse_prefixes(settings.env("AGENT_REPORTS_COMPLIANCE_SENSITIVE_PATHS")),
    )


@asset(**COMMON, io_manager_key="range_io_manager", kinds={"pyarrow"})
def compliance_log_findings(
    context: AssetExecutionContext, source: DataSourceResource
) -> dict[str, dict]:
    """Per month: policy findings over the access logs (sensitive paths from outside the
    allow-list, 401/403 bursts, personal data in URLs), each with file:line evidence, and
    what was read: lines per file, parsed and skipped, and the `ok` / `unknown` verdict.
    Logs that cannot be read give `unknown` (and a failing check), not a failed run: the
    history half of the audit still stands."""
    config = policy_config()
    values = {}
    for key, month in _months(context).items():
        scan, stats, problem = PolicyScan(config), ReadStats(), None
        try:
            for chunk in month_records(source.get(), month.start, month.end, stats):
                scan.add(chunk)
        except InputError as error:
            problem = f"access logs unreadable: {error}"
        per_file = {name: asdict(counts) for name, counts in stats.per_file.items()}
        scanned = log_coverage(stats.files, per_file, stats.unreadable or [], problem)
        findings = scan.findings()
        values[key] = {
            "log_lines": scan.lines,
            "log_files": stats.files,
            "unreadable": stats.unreadable or [],
            "log_scan": scanned,
            "policy_findings": findings,
        }
        context.add_asset_metadata(
            {
                "log_verdict": scanned["verdict"],
                "log_lines": scan.lines,
                "log_lines_read": stats.lines,
                "log_lines_skipped": stats.skipped,
                "policy_findings": len(findings),
            },
            partition_key=key,
        )
    return values


RANGE_COLUMNS = ["analysis", "windows", "count", "status", "flags", "deadline (UTC)"]
RANGE_COLUMNS += ["first report (UTC)", "h after window end", "runs", "failed runs", "retries"]
RANGE_COLUMNS += ["run ids"]
DELIVERY_COLUMNS = [
    "when",
    "kind",
    "channel",
    "report",
    "partition",
    "recipient",
    "status",
    "attempts",
    "error",
]
FINDING_KEYS = ("id", "rule", "client", "path", "first", "last", "count")
COVERAGE_COLUMNS = ["windows", "ok", "late", "missing", "failed", "not scheduled"]
COVERAGE_COLUMNS += ["degraded", "re-run", "retried"]
# The coverage bar: what each share of an analysis' windows became.
COVERAGE_PARTS = [
    ("ok", "#1a7f37"),
    ("late", "#bf8700"),
    ("failed", "#cf222e"),
    ("missing", "#fa4549"),
    ("not scheduled", "#d0d7de"),
]


def _key_text(key: str) -> str:
    """A partition key as people read it: hourly keys `2024-03-01-05:00` as `2024-03-01 05:00`."""
    return f"{key[:10]} {key[11:]}" if len(key) == 16 else key


def range_text(found: dict) -> str:
    first, last = _key_text(found["first"]), _key_text(found["last"])
    return first if found["windows"] == 1 else f"{first} → {last}"


def next_key(analysis: str, key: str) -> str | None:
    partitions = declared_partitions(analysis)
    return partitions.get_next_partition_key(key) if partitions else None


def _range_row(found: dict) -> list:
    single = found["windows"] == 1
    deadline = found["first_deadline"][:16].replace("T", " ")
    if not single:
        deadline += f" → {found['last_deadline'][:16].replace('T', ' ')}"
    first = found["first_materialized"]
    return [
        found["analysis"],
        range_text(found),
        found["windows"],
        found["status"],
        ", ".join(found["flags"]),
        deadline,
        first[:16].replace("T", " ") if single and first else None,
        found["hours_after_window_end"] if single else None,
        found["runs"],
        found["failed_runs"],
        found["retries"],
        " ".join(run_id[:8] for run_id in found["run_ids"]),
    ]


def _tables(audit: dict) -> list[Table]:
    coverage_rows = [
        [analysis, *(counts.get(c, 0) for c in COVERAGE_COLUMNS)]
        for analysis, counts in audit["coverage"].items()
    ]
    ranges = window_ranges(audit["problem_windows"], next_key)
    problems = [_range_row(r) for r in ranges if r["status"] != NOT_SCHEDULED]
    unscheduled = [
        [r["analysis"], range_text(r), r["windows"], r["reason"]]
        for r in ranges
        if r["status"] == NOT_SCHEDULED
    ]
    sent = [[d[k] for k in DELIVERY_COLUMNS] for d in audit["deliveries"]]
    findings = [
        [*(f[k] for k in FINDING_KEYS), ", ".join(f["evidence"])] for f in audit["policy_findings"]
    ]
    return [
        Table("Coverage per analysis", ["analysis", *COVERAGE_COLUMNS], coverage_rows),
        Table("Problem windows (consecutive windows grouped)", RANGE_COLUMNS, problems),
        Table("Not scheduled", ["analysis", "windows", "count", "why"], unscheduled),
        Table("Deliveries", DELIVERY_COLUMNS, sent),
        *_llm_tables(audit.get("llm")),
        Table(
            "Policy findings",
            ["id", "rule", "client", "path", "first", "last", "count", "evidence (file:line)"],
            findings,
        ),
        _files_table(audit["log_scan"]["files"]),
    ]


def coverage_chart(audit: dict) -> Chart:
    """Each analysis' windows as one bar: ok, late, failed, missing, not scheduled."""
    rows = [(analysis, counts) for analysis, counts in audit["coverage"].items()]
    return stacked_bars("Coverage per analysis (windows due in the month)", rows, COVERAGE_PARTS)


def _files_table(files: list[dict]) -> Table:
    """One row per log file: its share of the month, with whatever the reader counts."""
    columns = list(files[0]) if files else ["file", "parsed", "skipped"]
    return Table(
        "Access-log files read (the month's lines)",
        columns,
        [[f.get(c) for c in columns] for f in files],
    )


def log_scan_note(scan: dict) -> str:
    """The first-screen line on what the log scan read, and whether it vouches for the month."""
    counts = (
        f"{scan['lines']} line(s) of the month from {len(scan['files'])} file(s): "
        f"{scan['parsed']} parsed, {scan['skipped']} skipped"
    )
    if scan["verdict"] == "unknown":
        return (
            f"Access-log scan: verdict UNKNOWN ({'; '.join(scan['reasons'])}). {counts}. "
            "Policy findings cannot be ruled out for this month."
        )
    return f"Access-log scan: {counts}."


def _llm_tables(llm: dict | None) -> list[Table]:
    """The month's LLM cost per analysis and its low-quality windows (core/quality.py)."""
    if not llm:
        return []
    cost = [
        [analysis, row["reports"], row["cost_usd"], row["unknown_cost"]]
        for analysis, row in llm["cost_per_analysis"].items()
    ]
    low = [[w["analysis"], w["window"], w["quality_score"]] for w in llm["low_quality_windows"]]
    return [
        Table("LLM cost per analysis", ["analysis", "reports", "USD", "unknown price"], cost),
        Table("Low-quality windows", ["analysis", "window", "quality score"], low),
    ]


def build_compliance_report(key: str, audit: dict, answer: AnalystAnswer) -> Report:
    scan = audit["log_scan"]
    notes = [
        Note(log_scan_note(scan), "error" if scan["verdict"] == "unknown" else "info"),
        Note(
            "Figures, classifications and evidence come from the instance's run history, the "
            "delivery ledger and the access logs, not from the LLM. A window is audited in the "
            "month its deadline falls in; history after the month's end is not counted. A "
            "window is not scheduled when it was due before the analysis first ran in this "
            "instance, or after its schedule was stopped."
        ),
        *notes_at("error", (f"Log file unreadable: {p}" for p in audit["unreadable"])),
        *notes_at("warning" if answer.degraded else "info", report_notes(answer)),
    ]
    return report_from_answer(
        COMPLIANCE,
        key,
        answer,
        findings=answer.narrative["findings"],
        metrics=audit,
        tables=_tables(audit),
        notes=notes,
        charts=[coverage_chart(audit)] if audit["coverage"] else [],
        prompt_version=prompts.PROMPT_VERSION,
    )


def month_audit(key: str, _root: Path, history: dict, log_findings: dict) -> dict:
    """What a month's audit report is made of: its history half and its log half."""
    return {"month": key[:7], **history, **log_findings}


@report_asset(
    COMPLIANCE,
    prompts,
    build_compliance_report,
    reads=["compliance_history", "compliance_log_findings"],
    gather=month_audit,
    tools=lambda key, root, history, log_findings: tools.tools(
        month_audit(key, root, history, log_findings)
    ),
)
def compliance_report(_key: str, audit: dict) -> dict:
    """The month's audit: figures and evidence from code, executive summary from the
    analyst (cached)."""
    return prompts.prompt_data(audit)
