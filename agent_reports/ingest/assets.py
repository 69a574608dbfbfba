"""The access-log store in the UI: an hourly asset whose materialisation ingests what is new
under the logs folder and records, per hour of its run, what the store holds.

The analyses do not depend on it: the files source ingests before every read, and
whichever ingest comes first does the work (the others find nothing new). So it sits in
its own group and job (ingest/partitions.py), not in the anomalies job, where it would add
two events per hour to every backfill. Its schedule (`ingest_job_schedule`, :02 past each
hour, off by default like every schedule) keeps it current; materialising a range shows
each hour.
No pool: the store's file lock keeps two ingests apart.
"""

from datetime import UTC, datetime
from pathlib import Path

from dagster import AssetExecutionContext, Failure, MaterializeResult, MetadataValue, asset

from agent_reports.core.access_logs_demo import write_demo_logs
from agent_reports.core.input_checks import input_failure
from agent_reports.core.log_store import LogStore, folder_store
from agent_reports.core.resources import DataSourceResource
from agent_reports.core.sources import DemoSource, FileSource, InputError
from agent_reports.ingest.partitions import INGEST


def source_store(source: DataSourceResource) -> tuple[Path, LogStore] | None:
    """The logs folder of the files source (or the demo's, which it writes its generated
    logs into) and its store; None for a source without one; a clear failure when the
    files source's folder is missing."""
    files = source.get()
    if isinstance(files, DemoSource) and files.logs_dir is not None:
        files.logs_dir.mkdir(parents=True, exist_ok=True)
        return files.logs_dir, folder_store(files.logs_dir)
    if not isinstance(files, FileSource):
        return None
    folder = files.data_dir / "logs"
    if not folder.is_dir():
        error = InputError(folder, None, None, "folder not found (AGENT_REPORTS_DATA_DIR/logs)")
        raise Failure(description=str(error), allow_retries=False)
    return folder, folder_store(folder)


def _at(epoch_hour: int) -> datetime:
    return datetime.fromtimestamp(epoch_hour * 3600, UTC)


def _epoch_hour(key: str) -> int:
    return int(INGEST.partitions.time_window_for_partition_key(key).start.timestamp()) // 3600


@asset(**INGEST.asset_args(), kinds={"parquet"})
def access_log_store(
    context: AssetExecutionContext, source: DataSourceResource
) -> MaterializeResult:
    """Raw access-log files parsed once into Parquet by UTC hour (state dir, log_store/):
    new lines ingested, then each hour's lines, malformed lines, bytes and files shown."""
    found = source_store(source)
    if found is None:
        return MaterializeResult(metadata={"note": "this source has no logs folder"})
    folder, store = found
    hours = {key: _epoch_hour(key) for key in context.partition_keys}
    demo = source.get()
    if isinstance(demo, DemoSource):  # the demo writes the hours asked for, as a server would
        first, last = min(hours.values()), max(hours.values()) + 1
        write_demo_logs(demo.seed, folder, _at(first), _at(last))
    try:
        summary = store.ingest(folder)
    except InputError as error:
        raise input_failure("access-log", error) from None
    stats = store.hour_stats(min(hours.values()), max(hours.values()) + 1)
    for key, hour in hours.items():
        held = stats.get(hour)
        context.add_asset_metadata(
            {
                "lines": held.lines if held else 0,
                "malformed_lines": held.malformed if held else 0,
                "bytes": MetadataValue.int(held.bytes if held else 0),
                "files": held.files if held else 0,
                "parts": held.parts if held else 0,
            },
            partition_key=key,
        )
    return MaterializeResult(
        metadata={
            "store": MetadataValue.path(str(store.root)),
            "files_seen": summary.files_seen,
            "files_read": summary.files_read,
            "lines_ingested": summary.lines,
            "malformed_ingested": summary.malformed,
            "bytes_read": summary.bytes_read,
            "hours_changed": len(summary.hours),
        }
    )
