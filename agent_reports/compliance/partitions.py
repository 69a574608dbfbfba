"""Compliance partitions and schedule: one UTC calendar month per partition, run at 00:00 UTC
on the 1st for the month just ended."""

from dagster import (
    AssetSelection,
    MonthlyPartitionsDefinition,
    build_schedule_from_partitioned_job,
    define_asset_job,
)

ANALYSIS = "compliance"
POOL = ANALYSIS
START_DATE = "2024-01-01"

compliance_partitions = MonthlyPartitionsDefinition(start_date=START_DATE, timezone="UTC")

compliance_job = define_asset_job(
    name="compliance_job",
    selection=AssetSelection.groups(ANALYSIS),
    partitions_def=compliance_partitions,
    description="Run history, deliveries and access logs → audit report, per UTC month.",
)

# Built from the job, so the cron follows the partition grain: 00:00 UTC on the 1st
# requests the month that just ended, with run_key = partition key.
compliance_schedule = build_schedule_from_partitioned_job(
    compliance_job,
    day_of_month=1,
    hour_of_day=0,
    minute_of_hour=0,
    description="The 1st of each month at 00:00 UTC: the audit of the month that just ended.",
)
