"""Anomaly partitions and schedule: one UTC hour per partition, run at :05 for the hour before."""

from dagster import (
    AssetSelection,
    HourlyPartitionsDefinition,
    build_schedule_from_partitioned_job,
    define_asset_job,
)

ANALYSIS = "anomalies"
POOL = ANALYSIS
START = "2024-01-01-00:00"

anomalies_partitions = HourlyPartitionsDefinition(start_date=START, timezone="UTC")

anomalies_job = define_asset_job(
    name="anomalies_job",
    selection=AssetSelection.groups(ANALYSIS),
    partitions_def=anomalies_partitions,
    description="Access logs → hourly features → anomalies → report → alert, per UTC hour.",
)

# Built from the job so the cron cannot drift from the partition grain: at :05 it requests
# the newest complete hour with run_key = partition key.
anomalies_schedule = build_schedule_from_partitioned_job(
    anomalies_job,
    minute_of_hour=5,
    description="Every hour at :05 UTC: the hour that just ended (run_key = the hour).",
)
