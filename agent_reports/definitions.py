"""The one entry point: every analysis' assets, checks, jobs and schedules, and the shared
resources, assembled once. Cross-cutting policy (pools, the run queue, retries) lives in
dagster.yaml; each analysis declares its own pool on its assets."""

from __future__ import annotations

from dagster import Definitions, load_asset_checks_from_modules, load_assets_from_modules

from agent_reports.core.resources import (
    AnalystResource,
    DataSourceResource,
    PartitionRangeIOManager,
    ReportStoreResource,
)
from agent_reports.market import assets as market_assets
from agent_reports.market import checks as market_checks
from agent_reports.market.partitions import market_job, market_schedule

defs = Definitions(
    assets=load_assets_from_modules([market_assets]),
    asset_checks=load_asset_checks_from_modules([market_checks]),
    jobs=[market_job],
    schedules=[market_schedule],
    resources={
        "source": DataSourceResource(),
        "analyst": AnalystResource(),
        "reports": ReportStoreResource(),
        "range_io_manager": PartitionRangeIOManager(),
    },
)
