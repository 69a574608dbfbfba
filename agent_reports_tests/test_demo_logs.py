"""The demo's access logs take the users' path: written as daily files under
`<data_dir>/logs/demo/`, ingested into the log store, the window read from the store; and
any demo day holds an hour the detector flags and a request the policy scan finds."""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
from dagster import materialize

from agent_reports.anomalies import assets as anomalies_assets
from agent_reports.compliance.analysis import PolicyConfig, PolicyScan
from agent_reports.compliance.logs import ReadStats, month_records
from agent_reports.core.access_logs_demo import POLICY_CLIENT, POLICY_PATH, demo_incident
from agent_reports.core.log_store import folder_store
from agent_reports.core.resources import DataSourceResource
from agent_reports.core.sources import DemoSource
from agent_reports.definitions import defs

DAY = datetime(2024, 3, 5, tzinfo=UTC)


def _hour(epoch_hour: int) -> datetime:
    return datetime.fromtimestamp(epoch_hour * 3600, UTC)


def _day_incident(day: datetime) -> int:
    """The day's 5xx burst hour (every demo day has one)."""
    first = int(day.timestamp()) // 3600
    return next(h for h in range(first, first + 24) if demo_incident(7, h) == "error_burst")


def _table(chunks) -> pa.Table:
    return pa.concat_tables([chunk.records for chunk in chunks])


def test_demo_logs_are_files_read_through_the_store(isolated_dirs: Path) -> None:
    source = DataSourceResource().get()
    logs = isolated_dirs / "data" / "logs"
    assert isinstance(source, DemoSource) and source.logs_dir == logs
    burst = _day_incident(DAY)
    start, end = _hour(burst - 3), _hour(burst + 1)
    stored = _table(source.access_logs(start, end))
    in_memory = _table(DemoSource(7).access_logs(start, end))
    assert stored.num_rows == in_memory.num_rows > 0
    columns = ["time", "client", "path", "status", "bytes", "request_time"]
    assert stored.sort_by("time").select(columns).to_pylist() == (
        in_memory.sort_by("time").select(columns).to_pylist()
    )
    day_file = logs / "demo" / "access.log-20240305"
    assert day_file.is_file() and "demo/access.log-20240305" in str(
        next(iter(folder_store(logs).file_formats()))
    )
    size = day_file.stat().st_size
    later = _table(source.access_logs(end, end + timedelta(hours=1)))  # the file grows
    assert day_file.stat().st_size > size
    expected = _table(DemoSource(7).access_logs(end, end + timedelta(hours=1)))
    assert later.num_rows == expected.num_rows > 0


def test_a_demo_day_raises_an_alert_and_a_policy_finding(isolated_dirs: Path) -> None:
    burst = _day_incident(DAY)
    key = _hour(burst).strftime("%Y-%m-%d-%H:%M")
    result = materialize(
        [
            anomalies_assets.anomalies_traffic,
            anomalies_assets.anomalies_detection,
            anomalies_assets.anomalies_report,
            anomalies_assets.anomalies_alert,
        ],
        partition_key=key,
        resources=defs.resources,
    )
    assert result.success
    report = json.loads((isolated_dirs / "reports" / "anomalies" / f"{key}.json").read_text())
    assert report["metrics"]["severity"] != "none"
    assert (isolated_dirs / "data" / "logs" / "demo" / "access.log-20240305").is_file()

    source = DataSourceResource().get()
    stats = ReadStats()
    scan = PolicyScan(PolicyConfig())
    for chunk in month_records(source, DAY, DAY + timedelta(days=2), stats):
        scan.add(chunk)
    hits = [f for f in scan.findings() if f["rule"] == "sensitive-path"]
    [finding] = hits
    assert (finding["client"], finding["path"], finding["count"]) == (POLICY_CLIENT, POLICY_PATH, 2)
    assert (finding["first"][:10], finding["last"][:10]) == ("2024-03-05", "2024-03-06")
    assert stats.parsed > 0 and all("demo/" in name for name in stats.per_file)
