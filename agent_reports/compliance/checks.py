"""Compliance asset checks: the audit report is grounded (quality), every window due in
the month produced its report (a warning that lists the gaps, so they show in the UI), and
the month's access logs were read (an error: an audit of unread logs vouches for nothing)."""

import json

from dagster import AssetCheckResult, AssetCheckSeverity, asset_check

from agent_reports.compliance.assets import (
    compliance_history,
    compliance_log_findings,
    compliance_report,
)
from agent_reports.compliance.partitions import ANALYSIS, compliance_partitions
from agent_reports.core.publishing import report_quality_check
from agent_reports.core.reports import neutral_text
from agent_reports.core.resources import ReportStoreResource

MAX_LISTED = 20


@asset_check(asset=compliance_report, partitions_def=compliance_partitions)
def report_is_grounded(context, reports: ReportStoreResource) -> AssetCheckResult:
    """Each audit of the run exists, has a summary, and was not degraded to the template."""
    return report_quality_check(reports.path(), ANALYSIS, context.partition_keys)


@asset_check(asset=compliance_history, partitions_def=compliance_partitions)
def every_window_has_its_report(compliance_history: dict[str, dict]) -> AssetCheckResult:
    """Fails (as a warning) when any window due in the month is missing or failed."""
    gaps = [
        f"{w['analysis']} {w['window']}: {w['status']}"
        for month in compliance_history.values()
        for w in month["problem_windows"]
        if w["status"] in ("missing", "failed")
    ]
    return AssetCheckResult(
        passed=not gaps,
        severity=AssetCheckSeverity.WARN,
        metadata={"gaps": len(gaps), "examples": json.dumps(gaps[:MAX_LISTED])},
        description=None if not gaps else f"{len(gaps)} window(s) without a report",
    )


@asset_check(asset=compliance_log_findings, partitions_def=compliance_partitions)
def logs_were_read(compliance_log_findings: dict[str, dict]) -> AssetCheckResult:
    """Fails (an error) when a month's log scan verdict is `unknown`: no log folder or
    file, no line in the month, a file that broke off, or mostly unreadable lines."""
    unknown = {
        key: month["log_scan"]["reasons"]
        for key, month in compliance_log_findings.items()
        if month["log_scan"]["verdict"] == "unknown"
    }
    scans = [month["log_scan"] for month in compliance_log_findings.values()]
    said = "; ".join(f"{key}: {', '.join(reasons)}" for key, reasons in unknown.items())
    return AssetCheckResult(
        passed=not unknown,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "unknown_months": len(unknown),
            "reasons": json.dumps(dict(list(unknown.items())[:MAX_LISTED])),
            "lines_read": sum(scan["lines"] for scan in scans),
            "lines_skipped": sum(scan["skipped"] for scan in scans),
        },
        description=neutral_text("access logs not read: " + said)[:500] if unknown else None,
    )


compliance_checks = [report_is_grounded, every_window_has_its_report, logs_were_read]
