"""Churn partitions and schedule: one UTC week (Monday start) per partition, run Monday
07:00 UTC for the week just ended."""

from dagster import (
    AssetSelection,
    WeeklyPartitionsDefinition,
    build_schedule_from_partitioned_job,
    define_asset_job,
)

ANALYSIS = "churn"
POOL = ANALYSIS
START_DATE = "2024-01-01"  # a Monday

churn_partitions = WeeklyPartitionsDefinition(start_date=START_DATE, day_offset=1, timezone="UTC")

churn_job = define_asset_job(
    name="churn_job",
    selection=AssetSelection.groups(ANALYSIS),
    partitions_def=churn_partitions,
    description="Customers → model and segments → report → email, for one UTC week.",
)

# Built from the job, so the cron follows the partition grain: Monday 07:00 UTC requests
# the week that ended at Monday 00:00, with run_key = partition key.
churn_schedule = build_schedule_from_partitioned_job(
    churn_job,
    day_of_week=1,
    hour_of_day=7,
    minute_of_hour=0,
    description="Mondays at 07:00 UTC: the week (Monday to Sunday) that just ended.",
)
