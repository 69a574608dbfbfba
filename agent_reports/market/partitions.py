"""Market partitions and schedule: one UTC day per partition, run at 06:00 for the day before."""

from __future__ import annotations

from dagster import (
    AssetSelection,
    DailyPartitionsDefinition,
    build_schedule_from_partitioned_job,
    define_asset_job,
)

ANALYSIS = "market"
POOL = ANALYSIS
START_DATE = "2024-01-01"

market_partitions = DailyPartitionsDefinition(start_date=START_DATE, timezone="UTC")

market_job = define_asset_job(
    name="market_job",
    selection=AssetSelection.groups(ANALYSIS),
    partitions_def=market_partitions,
    description="Prices → metrics → report for one UTC day (or a range, in a backfill).",
)

# Built from the job, so the cron cannot drift from the partition grain: at 06:00 UTC it
# requests the newest complete day with run_key = partition key.
market_schedule = build_schedule_from_partitioned_job(
    market_job,
    hour_of_day=6,
    minute_of_hour=0,
    description="Every day at 06:00 UTC: the previous UTC day's prices (run_key = the day).",
)
