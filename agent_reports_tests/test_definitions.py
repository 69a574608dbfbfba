"""The code location loads, and its schedules request the right window at fixed instants."""

from datetime import UTC, datetime

import pytest
from dagster import Definitions, build_schedule_context

from agent_reports.core.settings import ANALYSES
from agent_reports.definitions import defs
from agent_reports.ingest.assets import GROUP as INGEST_GROUP


def test_definitions_load() -> None:
    Definitions.validate_loadable(defs)
    repository = defs.get_repository_def()
    assert "market_job" in {job.name for job in repository.get_all_jobs()}


def test_every_asset_sits_in_the_pool_of_its_analysis() -> None:
    """The pool is what keeps two runs of one analysis apart (granularity run)."""
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assets_def = node.assets_def
        group = node.group_name
        if group == INGEST_GROUP:  # the log store: its file lock, not a pool, serialises ingests
            continue
        assert group in ANALYSES, f"{key} is in group {group!r}, not an analysis"
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
