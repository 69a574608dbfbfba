"""Anomaly assets: access logs → hourly traffic → verdict → report → alert, per UTC hour.

Each asset handles every partition of its run (one hour when scheduled, a whole range in
a single-run backfill) and returns `{partition_key: value}`. The logs are scanned once
per run, from the baseline of the earliest hour to the end of the latest.
"""

import os
from datetime import UTC, datetime
from pathlib import Path

from dagster import AssetExecutionContext, Failure, MaterializeResult, MetadataValue, asset

from agent_reports.anomalies import prompts, tools
from agent_reports.anomalies.analysis import (
    LOOKBACK_HOURS,
    SEVERITIES,
    UNKNOWN,
    HourlyTraffic,
    detect,
    partition_traffic,
)
from agent_reports.anomalies.partitions import ANALYSIS, ANOMALIES, anomalies_partitions
from agent_reports.anomalies.prompts import metric_format
from agent_reports.core import settings
from agent_reports.core.analyst import AnalystAnswer
from agent_reports.core.charts import Band, band_chart
from agent_reports.core.delivery import Message
from agent_reports.core.input_checks import input_failure
from agent_reports.core.investigation import Toolbox
from agent_reports.core.publishing import (
    report_asset,
    report_from_answer,
    report_notes,
)
from agent_reports.core.reports import Chart, Note, Report, Table, format_value, notes_at
from agent_reports.core.resources import (
    DataSourceResource,
    DeliveryResource,
    ReportStoreResource,
)
from agent_reports.core.sources import InputError

COMMON = ANOMALIES.asset_args()


def _hours(context: AssetExecutionContext) -> dict[str, int]:
    """Partition key → epoch hour (UTC)."""
    return {
        key: int(anomalies_partitions.time_window_for_partition_key(key).start.timestamp()) // 3600
        for key in context.partition_keys
    }


def _at(hour: int) -> datetime:
    return datetime.fromtimestamp(hour * 3600, UTC)


@asset(**COMMON, io_manager_key="range_io_manager", kinds={"pyarrow"})
def anomalies_traffic(
    context: AssetExecutionContext, source: DataSourceResource
) -> dict[str, dict]:
    """Each hour's features (requests, status codes, error rates, latency, bytes, clients,
    paths, new user agents, malformed lines) and its baseline values."""
    hours = _hours(context)
    start, end = _at(min(hours.values()) - LOOKBACK_HOURS), _at(max(hours.values()) + 1)
    try:
        traffic = HourlyTraffic().add_all(source.get().access_logs(start, end))
    except InputError as error:
        raise input_failure("access-log", error) from None
    for name, count in sorted(traffic.untimed.items()):
        context.log.warning(
            f"{name}: {count} line(s) with no readable timestamp, charged to every hour"
        )
    values = {}
    for key, hour in hours.items():
        values[key] = partition_traffic(traffic, hour)
        features = values[key]["features"]
        coverage = features["coverage"]
        context.add_asset_metadata(
            {
                "requests": features["requests"],
                "malformed_lines": features["malformed_lines"],
                "lines_read": coverage["lines_read"],
                "lines_parsed": coverage["lines_parsed"],
                "lines_skipped": coverage["lines_skipped"] + coverage["lines_untimed"],
                "files": MetadataValue.json(coverage["files"]),
                "baseline_hours": len(values[key]["baseline"]["requests"]),
            },
            partition_key=key,
        )
    return values


@asset(**COMMON, io_manager_key="range_io_manager")
def anomalies_detection(
    context: AssetExecutionContext, anomalies_traffic: dict[str, dict]
) -> dict[str, dict]:
    """The verdict per hour, computed by code: ranked anomalies and the overall severity."""
    values = {}
    for key in context.partition_keys:
        window = anomalies_traffic[key]
        verdict = detect(window["features"], window["baseline"])
        values[key] = {**verdict, "features": window["features"]}
        context.add_asset_metadata(
            {"severity": verdict["severity"], "anomalies": len(verdict["anomalies"])},
            partition_key=key,
        )
    return values


def _evidence_text(evidence: dict) -> str:
    parts = []
    for label, items in evidence.items():
        names = ", ".join(f"{item['name']} ({list(item.values())[1]})" for item in items)
        parts.append(f"{label}: {names or '–'}")
    return "; ".join(parts)


def _tables(verdict: dict) -> list[Table]:
    features = verdict["features"]
    anomalies = []
    for a in verdict["anomalies"]:
        kind = metric_format(a["metric"])
        low, high = (format_value(kind, a[k]) for k in ("expected_low", "expected_high"))
        observed = format_value(kind, a["observed"])
        evidence = _evidence_text(a["evidence"])
        anomalies.append(
            [a["metric"], observed, f"{low} – {high}", a["score"], a["severity"], evidence]
        )
    tables = [
        Table(
            "Anomalies",
            ["metric", "observed", "expected", "score", "severity", "evidence"],
            anomalies,
            ["text", "text", "text", "score"],
        ),
        Table(
            "Status codes",
            ["status", "requests"],
            list(map(list, features["status_counts"].items())),
            ["text", "int"],
        ),
    ]
    for title, key in (
        ("Top clients", "top_clients"),
        ("Top paths", "top_paths"),
        ("Top user agents", "top_user_agents"),
    ):
        rows = [[i["name"], i["requests"]] for i in features[key]]
        tables.append(Table(title, ["name", "requests"], rows, ["text", "int"]))
    keys = ("file", "format", "lines_read", "lines_parsed", "lines_skipped", "lines_untimed")
    files = [[*(f[k] for k in keys), f["unreadable_since"]] for f in features["coverage"]["files"]]
    columns = ["file", "format", "read", "parsed", "skipped", "no timestamp", "unreadable since"]
    tables.append(Table("Log files read", columns, files, ["text", "text", *["int"] * 4]))
    samples = [[s["file"], s["line"], s["text"]] for s in features["malformed_samples"]]
    if samples:
        tables.append(Table("Malformed line samples", ["file", "line", "text"], samples))
    return tables


VERDICT_LEVELS = {"none": "info", "low": "warning", "medium": "error", "high": "error"}


def verdict_note(verdict: dict) -> Note:
    """The code's verdict: information when nothing was found, an alarm only when it was."""
    count = len(verdict["anomalies"])
    text = (
        f"Verdict (computed from the data, not by the LLM): severity {verdict['severity']}, "
        f"{count} anomal{'y' if count == 1 else 'ies'}."
    )
    return Note(text, VERDICT_LEVELS.get(verdict["severity"], "error"))


def baseline_chart(verdict: dict) -> list[Chart]:
    """The hour's requests and 5xx rate against their baseline band (analysis.bands)."""
    labels = {"requests": ("requests", "int"), "rate_5xx": ("5xx rate", "rate")}
    shown = [
        Band(*labels[name], b["baseline"], b["expected_low"], b["expected_high"], b["observed"])
        for name, b in (verdict.get("bands") or {}).items()
        if name in labels
    ]
    return [band_chart("This hour against the same hour on earlier days", shown)] if shown else []


def build_anomalies_report(key: str, verdict: dict, answer: AnalystAnswer) -> Report:
    features = verdict["features"]
    notes = [verdict_note(verdict)]
    if not verdict["baseline_sufficient"]:
        notes.append(
            Note(
                f"Baseline too short ({verdict['baseline_hours']} hours with traffic): "
                "no anomaly can be judged for this hour.",
                "warning",
            )
        )
    notes += coverage_notes(features["coverage"])
    notes += notes_at("warning" if answer.degraded else "info", report_notes(answer))
    narrative = answer.narrative
    if verdict["anomalies"] or verdict["severity"] == UNKNOWN:
        notes += [
            Note(f"Probable cause: {narrative['probable_cause']}"),
            Note(f"Look first at: {narrative['look_first']}"),
        ]
    metrics = {
        "severity": verdict["severity"],
        "anomalies": verdict["anomalies"],
        "baseline_hours": verdict["baseline_hours"],
        "bands": verdict.get("bands") or {},
        **features,
    }
    return report_from_answer(
        ANOMALIES,
        key,
        answer,
        findings=narrative["findings"],
        metrics=metrics,
        tables=_tables(verdict),
        notes=notes,
        charts=baseline_chart(verdict),
        prompt_version=prompts.PROMPT_VERSION,
    )


def _toolbox(_key: str, _root: Path, verdict: dict, traffic: dict) -> Toolbox:
    """The analyst's tools for one hour: its features and their 7-day baseline."""
    return tools.tools(verdict["features"], traffic["baseline"])


@report_asset(
    ANOMALIES,
    prompts,
    build_anomalies_report,
    reads=["anomalies_detection", "anomalies_traffic"],
    tools=_toolbox,
)
def anomalies_report(key: str, verdict: dict) -> dict:
    """The hour's anomaly report: verdict from code, triage note from the analyst (cached)."""
    return prompts.prompt_data(verdict, verdict["features"], key)


def coverage_notes(coverage: dict) -> list[Note]:
    """What the hour read, for the first screen: totals, unreadable files, format changes."""
    notes = [
        Note(
            f"Read {coverage['lines_read']:,} log line(s) of this hour: "
            f"{coverage['lines_parsed']:,} parsed, {coverage['lines_skipped']:,} skipped as "
            "malformed"
            + (
                f", {coverage['lines_untimed']:,} without a readable timestamp (charged to "
                "every hour)"
                if coverage["lines_untimed"]
                else ""
            )
            + "; per file below."
        )
    ]
    if not coverage["lines_read"]:
        notes.append(Note("No log line of this hour was found in any file.", "warning"))
    for file in coverage["files"]:
        if file["unreadable_since"] or (file["lines_untimed"] and not file["lines_parsed"]):
            notes.append(Note(unreadable_text(file), "error"))
    for change in coverage["format_changes"]:
        notes.append(
            Note(
                f"Log format of {change['file']} changed at line {change['line']} "
                f"({change['time']}): {change['previous']} → {change['new']}; parsing "
                "continued.",
                "warning",
            )
        )
    return notes


def unreadable_text(file: dict) -> str:
    since = f" since {file['unreadable_since']}" if file["unreadable_since"] else ""
    return (
        f"Logs of {file['file']} unreadable{since}: {file['lines_skipped'] + file['lines_untimed']}"
        f" of {file['lines_read']} line(s) fit no known format (format changed?)."
    )


def alert_threshold() -> str:
    """The lowest severity that alerts (env AGENT_REPORTS_ALERT_MIN_SEVERITY, default high)."""
    threshold = settings.env("AGENT_REPORTS_ALERT_MIN_SEVERITY", "high")
    if threshold not in SEVERITIES[1:]:
        raise ValueError(f"AGENT_REPORTS_ALERT_MIN_SEVERITY must be one of {SEVERITIES[1:]}")
    return threshold


def unknown_message(key: str, verdict: dict, report_path: str) -> Message:
    """The alert for an hour whose logs were mostly unreadable."""
    files = [f for f in verdict["features"]["coverage"]["files"] if f["unreadable_since"]]
    files = files or verdict["features"]["coverage"]["files"]
    rows = [f"- {unreadable_text(f)}" for f in files]
    names = ", ".join(f["file"] for f in files) or "every file"
    since = min((f["unreadable_since"] for f in files if f["unreadable_since"]), default=None)
    subject = f"[agent_reports] UNKNOWN {key} UTC: logs of {names} unreadable" + (
        f" since {since}: format changed?" if since else ": format changed?"
    )
    text = "\n".join([subject, "", *rows, "", f"Report: {report_path}", ""])
    payload = {
        "analysis": ANALYSIS,
        "partition": key,
        "severity": UNKNOWN,
        "files": files,
        "report": report_path,
    }
    return Message(subject=subject, text=text, payload=payload)


def format_change_message(key: str, change: dict, report_path: str) -> Message:
    """The alert for a log format that changed inside a file (parsing carried on)."""
    subject = (
        f"[agent_reports] Log format of {change['file']} changed at line {change['line']} "
        f"({change['time']}): {change['previous']} → {change['new']}"
    )
    text = "\n".join(
        [subject, "", "Parsing continued with the new format.", f"Report: {report_path}", ""]
    )
    payload = {"analysis": ANALYSIS, "partition": key, "format_change": change}
    payload["report"] = report_path
    return Message(subject=subject, text=text, payload=payload)


def alert_message(key: str, verdict: dict, report_path: str) -> Message:
    """The alert, identical for every run of the partition with the same verdict."""
    rows = [
        f"- {a['metric']}: {a['observed']} (expected {a['expected_low']:g}–{a['expected_high']:g},"
        f" score {a['score']:+.1f}, {a['severity']})"
        for a in verdict["anomalies"]
    ]
    subject = f"[agent_reports] {verdict['severity'].upper()} traffic anomalies in {key} UTC"
    text = "\n".join([subject, "", *rows, "", f"Report: {report_path}", ""])
    payload = {
        "analysis": ANALYSIS,
        "partition": key,
        "severity": verdict["severity"],
        "anomalies": [
            {k: a[k] for k in ("metric", "observed", "expected_low", "expected_high", "score")}
            | {"severity": a["severity"]}
            for a in verdict["anomalies"]
        ],
        "report": report_path,
    }
    return Message(subject=subject, text=text, payload=payload)


def alerts_for(
    key: str, verdict: dict, threshold: str, report_path: str
) -> list[tuple[str, Message]]:
    """The hour's alerts, each with its ledger fingerprint: the verdict when `unknown` or
    at or above the threshold, and one per log-format change that starts in the hour."""
    alerts = []
    severity = verdict["severity"]
    if severity == UNKNOWN:
        alerts.append((f"severity:{UNKNOWN}", unknown_message(key, verdict, report_path)))
    elif SEVERITIES.index(severity) >= SEVERITIES.index(threshold):
        alerts.append((f"severity:{severity}", alert_message(key, verdict, report_path)))
    for change in verdict["features"]["coverage"]["format_changes"]:
        fingerprint = f"format-change:{change['file']}:{change['line']}"
        alerts.append((fingerprint, format_change_message(key, change, report_path)))
    return alerts


@asset(**COMMON, deps=[anomalies_report])
def anomalies_alert(
    context: AssetExecutionContext,
    anomalies_detection: dict[str, dict],
    delivery: DeliveryResource,
    reports: ReportStoreResource,
) -> MaterializeResult:
    """One alert per (partition, severity) at or above the threshold, per `unknown` hour
    and per log-format change, through the ledger: re-runs and retries of the partition
    do not send it again."""
    threshold = alert_threshold()
    recipients = [
        address.strip()
        for address in (settings.env("AGENT_REPORTS_ALERT_EMAIL_TO", "") or "").split(",")
        if address.strip()
    ]
    notifier = None
    failures = []
    for key in context.partition_keys:
        verdict = anomalies_detection[key]
        severity = verdict["severity"]
        report_path = os.fspath(reports.path() / ANALYSIS / f"{key}.html")
        alerts = alerts_for(key, verdict, threshold, report_path)
        if not alerts:
            context.add_asset_metadata({"alerted": False, "severity": severity}, partition_key=key)
            continue
        notifier = notifier or delivery.notifier()
        if not recipients and notifier.webhook is None:
            context.log.warning(f"{key}: severity {severity} but no alert channel is configured")
        outcomes = []
        for fingerprint, message in alerts:
            outcomes += notifier.notify(ANALYSIS, key, fingerprint, message, recipients)
        failures += [f"{key} → {o.key.recipient}: {o.reason}" for o in outcomes if not o.ok]
        context.add_asset_metadata(
            {
                "alerted": True,
                "severity": severity,
                "alerts": MetadataValue.json([fingerprint for fingerprint, _ in alerts]),
                "deliveries": MetadataValue.json(
                    [
                        {"recipient": o.key.recipient, "status": o.status, "reason": o.reason}
                        for o in outcomes
                    ]
                ),
            },
            partition_key=key,
        )
    if failures:
        raise Failure(
            description=f"{len(failures)} alert delivery(ies) failed; a re-run sends only those",
            metadata={"failures": MetadataValue.json(failures[:50])},
        )
    return MaterializeResult()
