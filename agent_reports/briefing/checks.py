"""Briefing checks: every source was there at 09:00 and the text was not degraded. A
warning, not a block: a briefing with a gap is still worth sending, but the gap shows."""

import json

from dagster import AssetCheckResult, AssetCheckSeverity, asset_check

from agent_reports.briefing.assets import briefing_report
from agent_reports.briefing.partitions import ANALYSIS, briefing_partitions
from agent_reports.core.resources import ReportStoreResource


@asset_check(asset=briefing_report, partitions_def=briefing_partitions)
def briefing_is_complete(context, reports: ReportStoreResource) -> AssetCheckResult:
    """Each briefing of the run exists, had all three sources and was not degraded."""
    problems = []
    for key in context.partition_keys:
        path = reports.path() / ANALYSIS / f"{key}.json"
        if not path.exists():
            problems.append(f"{key}: no briefing file")
            continue
        record = json.loads(path.read_text())
        problems += [f"{key}: missing {gap}" for gap in record["metrics"]["missing"]]
        if record["degraded"]:
            problems.append(f"{key}: degraded to the offline template")
    return AssetCheckResult(
        passed=not problems,
        severity=AssetCheckSeverity.WARN,
        metadata={"problems": json.dumps(problems[:20])},
    )


briefing_checks = [briefing_is_complete]
