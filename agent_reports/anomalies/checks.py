"""Anomaly asset checks: the logs were readable (an error for an hour mostly unreadable, a
warning for a few bad lines), and every report exists and states the detector's verdict."""

import json

from dagster import AssetCheckResult, AssetCheckSeverity, asset_check

from agent_reports.anomalies.analysis import unreadable
from agent_reports.anomalies.assets import anomalies_report, anomalies_traffic
from agent_reports.anomalies.partitions import ANALYSIS, anomalies_partitions
from agent_reports.core.publishing import report_quality_check
from agent_reports.core.resources import ReportStoreResource

MAX_MALFORMED_SHARE = 0.05
MAX_LISTED = 20


@asset_check(asset=anomalies_traffic, partitions_def=anomalies_partitions)
def logs_mostly_parsed(context, anomalies_traffic: dict[str, dict]) -> AssetCheckResult:
    """Each hour's lines were read: an ERROR when most of an hour's lines are unreadable
    (its verdict is `unknown`), a WARN when more than 5% are, or when it has no line."""
    errors, warnings = [], []
    for key, window in anomalies_traffic.items():
        coverage = window["features"]["coverage"]
        read = coverage["lines_read"]
        unread = coverage["lines_skipped"] + coverage["lines_untimed"]
        text = f"{key}: {unread} of {read} lines unreadable"
        if unreadable(window["features"]):
            errors.append(text + " (verdict unknown)")
        elif not read:
            warnings.append(f"{key}: no log line in this hour")
        elif unread / read > MAX_MALFORMED_SHARE:
            warnings.append(text)
    return AssetCheckResult(
        passed=not errors and not warnings,
        severity=AssetCheckSeverity.ERROR if errors else AssetCheckSeverity.WARN,
        metadata={"problems": json.dumps((errors + warnings)[:MAX_LISTED])},
    )


@asset_check(asset=anomalies_report, partitions_def=anomalies_partitions)
def report_states_the_verdict(context, reports: ReportStoreResource) -> AssetCheckResult:
    """Each report exists, has a summary, carries the code's severity, and is not degraded."""

    def no_severity(record: dict) -> list[str]:
        return [] if record["metrics"].get("severity") is not None else ["no severity in metrics"]

    return report_quality_check(reports.path(), ANALYSIS, context.partition_keys, no_severity)


anomalies_checks = [logs_mostly_parsed, report_states_the_verdict]
