"""Test-only code location: the market analysis as shipped, made slow enough to show the
run queue at work, beside a slow asset in another pool.

- `market_probe` sits in the market pool, after `market_report`, and sleeps: every
  market run then lasts long enough that two would overlap if the queue let them.
- `other_pool_probe` sits in the anomalies pool and sleeps: a run of it should execute
  side by side with a market run, since pools limit one analysis, not the instance.
- the sign-ups analysis declared in YAML (agent_reports/defs/signups/) as shipped, with
  `signups_probe` holding each of its runs open: its pool must keep its runs apart too.

Sleep lengths come from TWO_POOLS_MARKET_SECONDS / TWO_POOLS_OTHER_SECONDS (read when the
step runs) so a test can tune them without touching production code.
"""

import os
import time

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetSelection,
    BackfillPolicy,
    Definitions,
    MaterializeResult,
    asset,
    define_asset_job,
)

from agent_reports import definitions as project
from agent_reports.anomalies.partitions import POOL as OTHER_POOL
from agent_reports.components import declared_definitions
from agent_reports.market import assets as market_assets
from agent_reports.market.checks import market_checks
from agent_reports.market.partitions import ANALYSIS, POOL, market_job, market_partitions


def _sleep(variable: str, default: float) -> float:
    seconds = float(os.environ.get(variable) or default)
    time.sleep(seconds)
    return seconds


@asset(
    group_name=ANALYSIS,
    partitions_def=market_partitions,
    pool=POOL,
    backfill_policy=BackfillPolicy.single_run(),
    deps=[market_assets.market_report],
)
def market_probe(context: AssetExecutionContext) -> MaterializeResult:
    """Holds the market run open for a few seconds after the report is written."""
    slept = _sleep("TWO_POOLS_MARKET_SECONDS", 4)
    context.log.info(f"market run held {slept}s for {len(context.partition_keys)} partition(s)")
    return MaterializeResult(metadata={"slept_seconds": slept})


@asset(pool=OTHER_POOL, group_name="other_pool")
def other_pool_probe() -> MaterializeResult:
    """A slow run in the anomalies pool, to overlap a market run."""
    return MaterializeResult(metadata={"slept_seconds": _sleep("TWO_POOLS_OTHER_SECONDS", 10)})


def with_signups(base: Definitions) -> Definitions:
    """`base` plus the declared sign-ups analysis and a probe in its pool that holds each
    of its runs open after the report, like `market_probe`. (A function: Dagster allows one
    Definitions object at module scope.)"""
    declared = declared_definitions()
    (report,) = [a for a in declared.assets if AssetKey("signups_report") in a.keys]

    @asset(
        group_name="signups",
        partitions_def=report.partitions_def,
        pool="signups",
        backfill_policy=BackfillPolicy.single_run(),
        deps=[report.key],
    )
    def signups_probe() -> MaterializeResult:
        return MaterializeResult(metadata={"slept_seconds": _sleep("TWO_POOLS_MARKET_SECONDS", 4)})

    return Definitions.merge(declared, Definitions(assets=[signups_probe]), base)


other_pool_job = define_asset_job(
    "other_pool_job", selection=AssetSelection.assets(other_pool_probe)
)

defs = with_signups(
    Definitions(
        assets=[
            market_assets.market_prices,
            market_assets.market_analysis,
            market_assets.market_report,
            market_probe,
            other_pool_probe,
        ],
        asset_checks=market_checks,
        jobs=[market_job, other_pool_job],
        # As shipped: one process per run. Under the multiprocess default each of the market
        # run's nine steps started its own process, and a run took minutes on a loaded machine.
        executor=project.defs.executor,
        resources={
            name: project.defs.resources[name]
            for name in ("source", "analyst", "reports", "range_io_manager")
        },
    ),
)
