"""Anomaly asset checks: the logs were mostly readable (a warning, so a bad log format shows),
and every report exists and states the verdict the detector computed."""

import json

from dagster import AssetCheckResult, AssetCheckSeverity, asset_check

from agent_reports.anomalies.assets import anomalies_report, anomalies_traffic
from agent_reports.anomalies.partitions import ANALYSIS, anomalies_partitions
from agent_reports.core.publishing import report_quality_check
from agent_reports.core.resources import ReportStoreResource

MAX_MALFORMED_SHARE = 0.05
MAX_LISTED = 20


@asset_check(asset=anomalies_traffic, partitions_def=anomalies_partitions)
def logs_mostly_parsed(context, anomalies_traffic: dict[str, dict]) -> AssetCheckResult:
    """At most 5% of each hour's lines are malformed (more suggests an unsupported format)."""
    problems = []
    for key, window in anomalies_traffic.items():
        features = window["features"]
        total = features["requests"] + features["malformed_lines"]
        if total and features["malformed_lines"] / total > MAX_MALFORMED_SHARE:
            problems.append(f"{key}: {features['malformed_lines']} of {total} lines malformed")
    return AssetCheckResult(
        passed=not problems,
        severity=AssetCheckSeverity.WARN,
        metadata={"problems": json.dumps(problems[:MAX_LISTED])},
    )


@asset_check(asset=anomalies_report, partitions_def=anomalies_partitions)
def report_states_the_verdict(context, reports: ReportStoreResource) -> AssetCheckResult:
    """Each report exists, has a summary, carries the code's severity, and is not degraded."""

    def no_severity(record: dict) -> list[str]:
        return [] if record["metrics"].get("severity") is not None else ["no severity in metrics"]

    return report_quality_check(reports.path(), ANALYSIS, context.partition_keys, no_severity)


anomalies_checks = [logs_mostly_parsed, report_states_the_verdict]
