"""The code location loads, its schedules request the right window at fixed instants, and
the catalog (owners, tags, kinds, schemas, code references, lineage) is complete."""

from datetime import UTC, datetime
from pathlib import Path

import pytest
from dagster import (
    AssetKey,
    AssetSpec,
    Definitions,
    LastPartitionMapping,
    MetadataValue,
    TimeWindowPartitionMapping,
    build_schedule_context,
)

from agent_reports.briefing.partitions import briefing_partitions
from agent_reports.core.declaration import declared_reports
from agent_reports.core.publishing import report_link
from agent_reports.core.settings import ANALYSES
from agent_reports.core.sources import MARKET_COLUMNS
from agent_reports.definitions import ANALYSES as DECLARED
from agent_reports.definitions import defs
from agent_reports.ingest.partitions import GROUP as INGEST_GROUP


def test_definitions_load() -> None:
    Definitions.validate_loadable(defs)
    repository = defs.get_repository_def()
    assert "market_job" in {job.name for job in repository.get_all_jobs()}


def test_every_asset_sits_in_the_pool_of_its_analysis() -> None:
    """The pool is what keeps two runs of one analysis apart (granularity run)."""
    graph = defs.resolve_asset_graph()
    yaml_declared = {d.analysis for d in declared_reports(defs.get_repository_def())}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assets_def = node.assets_def
        group = node.group_name
        if group == INGEST_GROUP:  # the log store: its file lock, not a pool, serialises ingests
            continue
        assert group in {*ANALYSES, *yaml_declared}, f"{key} is in group {group!r}, not an analysis"
        pools = {op.pool for op in assets_def.node_def.iterate_op_defs()}
        assert pools == {group}, f"{key.to_user_string()} runs in pools {pools}, not {group!r}"


@pytest.mark.parametrize(
    ("instant", "partition"),
    [
        (datetime(2024, 3, 6, 6, 0, tzinfo=UTC), "2024-03-05"),
        (datetime(2024, 3, 11, 6, 0, tzinfo=UTC), "2024-03-10"),  # a Sunday: still requested
        (datetime(2025, 1, 1, 6, 0, tzinfo=UTC), "2024-12-31"),
        (datetime(2024, 3, 31, 6, 0, tzinfo=UTC), "2024-03-30"),  # Europe's DST day: UTC is not
    ],
)
def test_market_schedule_requests_the_previous_utc_day(instant: datetime, partition: str) -> None:
    schedule = defs.resolve_schedule_def("market_job_schedule")
    assert schedule.cron_schedule == "0 6 * * *"
    assert schedule.execution_timezone == "UTC"
    context = build_schedule_context(scheduled_execution_time=instant)
    [request] = list(schedule.evaluate_tick(context).run_requests)
    assert request.partition_key == partition
    assert request.run_key == partition


def test_schedules_start_stopped_until_a_user_turns_them_on() -> None:
    schedule = defs.resolve_schedule_def("market_job_schedule")
    assert schedule.default_status.value == "STOPPED"


def _specs() -> dict[str, AssetSpec]:
    graph = defs.resolve_asset_graph()
    return {
        key.to_user_string(): graph.get(key).to_asset_spec() for key in graph.get_all_asset_keys()
    }


def test_every_asset_has_owners_tags_kinds_and_a_code_reference() -> None:
    """What the catalog shows for each asset (definitions.catalog_spec applies it once)."""
    specs = _specs()
    assert len(specs) >= 16
    for name, spec in specs.items():
        assert spec.owners, f"{name} has no owner"
        assert all(o.startswith("team:") or "@" in o for o in spec.owners), spec.owners
        assert spec.kinds, f"{name} has no kinds"
        assert spec.tags.get("analysis") == spec.group_name, f"{name}: tags {spec.tags}"
        cadences = {analysis.cadence for analysis in DECLARED}
        assert spec.tags.get("cadence") in cadences, f"{name}: tags {spec.tags}"
        references = spec.metadata["dagster/code_references"].code_references
        assert any(Path(getattr(r, "file_path", "")).is_file() for r in references), name


def test_tabular_inputs_declare_their_columns() -> None:
    specs = _specs()
    prices = specs["market_prices"].metadata["dagster/column_schema"]
    assert [c.name for c in prices.columns][: len(MARKET_COLUMNS)] == list(MARKET_COLUMNS)
    assert {c.name: c.type for c in prices.columns}["close"] == "float64"
    customers = specs["churn_customers"].metadata["dagster/column_schema"]
    assert {"customer_id", "contract", "monthly_charges", "churned"} <= {
        c.name for c in customers.columns
    }


def test_the_briefing_declares_the_reports_it_reads_as_lineage() -> None:
    """Lineage: market, anomalies and churn reports exist upstream of the briefing, each
    mapped to its latest partition (a time-window mapping cannot cross time zones)."""
    graph = defs.resolve_asset_graph()
    briefing = AssetKey("briefing_report")
    sources = {AssetKey(f"{name}_report") for name in ("market", "anomalies", "churn")}
    assert sources <= graph.get(briefing).parent_keys
    for key in sources:
        assert graph.has(key) and graph.get(key).is_materializable, key
        mapping = graph.get_partition_mapping(briefing, key)
        assert isinstance(mapping, LastPartitionMapping), (key, mapping)
        upstream = graph.get(key).partitions_def
        with pytest.raises(Exception, match="Timezones"):  # why not TimeWindowPartitionMapping
            TimeWindowPartitionMapping().get_upstream_mapped_partitions_result_for_partitions(
                briefing_partitions.empty_subset().with_partition_keys(["2024-03-11"]),
                briefing_partitions,
                upstream,
            )


def test_schedules_sensors_and_jobs_are_described() -> None:
    repository = defs.get_repository_def()
    for schedule in repository.schedule_defs:
        assert schedule.description, schedule.name
    for sensor in repository.sensor_defs:
        assert sensor.description, sensor.name
    for job in repository.get_all_jobs():
        if not job.name.startswith("__"):
            assert job.description, job.name
    assert defs.resolve_schedule_def("briefing_job_schedule").cron_schedule == "0 9 * * 1-5"


def test_report_links_are_urls_where_the_reports_are_served(tmp_path, monkeypatch) -> None:
    path = tmp_path / "reports" / "anomalies" / "2024-03-11-05:00.html"
    assert report_link(path, tmp_path / "reports") == MetadataValue.path(str(path))
    monkeypatch.setenv("AGENT_REPORTS_REPORTS_URL", "https://reports.example.com/agent/")
    assert report_link(path, tmp_path / "reports") == MetadataValue.url(
        "https://reports.example.com/agent/anomalies/2024-03-11-05%3A00.html"
    )
