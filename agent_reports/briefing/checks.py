"""Briefing checks: every source was there at 09:00 and the text was not degraded. A
warning, not a block: a briefing with a gap is still worth sending, but the gap shows."""

from dagster import AssetCheckResult, asset_check

from agent_reports.briefing.assets import briefing_report
from agent_reports.briefing.partitions import ANALYSIS, briefing_partitions
from agent_reports.core.publishing import report_quality_check
from agent_reports.core.resources import ReportStoreResource


@asset_check(asset=briefing_report, partitions_def=briefing_partitions)
def briefing_is_complete(context, reports: ReportStoreResource) -> AssetCheckResult:
    """Each briefing of the run exists, had all three sources and was not degraded."""

    def gaps(record: dict) -> list[str]:
        return [f"missing {gap}" for gap in record["metrics"]["missing"]]

    return report_quality_check(reports.path(), ANALYSIS, context.partition_keys, gaps)


briefing_checks = [briefing_is_complete]
