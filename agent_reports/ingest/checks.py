"""Log store checks: every raw file could be read to its end (a cut .gz is named)."""

from dagster import AssetCheckResult, AssetCheckSeverity, MetadataValue, asset_check

from agent_reports.core.resources import DataSourceResource
from agent_reports.ingest.assets import access_log_store, source_store
from agent_reports.ingest.partitions import INGEST

MAX_LISTED = 20


@asset_check(asset=access_log_store, partitions_def=INGEST.partitions)
def raw_files_read_to_the_end(context, source: DataSourceResource) -> AssetCheckResult:
    """No raw file broke off while it was read (a truncated or corrupt .gz): its lines after
    the break are in no report until the file is whole again."""
    found = source_store(source)
    if found is None:
        return AssetCheckResult(passed=True, metadata={"source": "no logs folder"})
    problems = found[1].problems()
    return AssetCheckResult(
        passed=not problems,
        severity=AssetCheckSeverity.ERROR,
        metadata={"problems": MetadataValue.json(problems[:MAX_LISTED])},
    )


ingest_checks = [raw_files_read_to_the_end]
