"""Briefing partitions and schedule: one New York weekday per partition, run at 09:00 New
York time for that same day.

Weekends are excluded from the partitions themselves, so the schedule built from the job
skips Saturday and Sunday ticks and the catch-up sensor never sees a weekend window.
`end_offset=1` makes the current day a partition: the 09:00 tick requests today's
briefing, not yesterday's. The timezone makes 09:00 mean 09:00 local across both DST
changes (14:00 UTC in winter, 13:00 UTC in summer).
"""

from datetime import datetime, timedelta

from dagster import (
    AssetSelection,
    DailyPartitionsDefinition,
    build_schedule_from_partitioned_job,
    define_asset_job,
)

ANALYSIS = "briefing"
POOL = ANALYSIS
START_DATE = "2024-01-01"
TIMEZONE = "America/New_York"
BRIEFING_TIME = timedelta(hours=9)  # local wall-clock time after midnight
WEEKENDS = "0 0 * * 6,0"

briefing_partitions = DailyPartitionsDefinition(
    start_date=START_DATE, timezone=TIMEZONE, exclusions=[WEEKENDS], end_offset=1
)

briefing_job = define_asset_job(
    name="briefing_job",
    selection=AssetSelection.groups(ANALYSIS),
    partitions_def=briefing_partitions,
    description="Latest market, anomaly and churn reports → one-page briefing → email.",
)

# Built from the job, so the cron follows the partitions: 09:00 New York, weekdays only,
# requesting that day with run_key = partition key.
briefing_schedule = build_schedule_from_partitioned_job(
    briefing_job,
    hour_of_day=int(BRIEFING_TIME.total_seconds()) // 3600,
    minute_of_hour=0,
)


def as_of(partition_key: str) -> datetime:
    """The instant a briefing describes: 09:00 New York on its day (wall-clock arithmetic
    on the zone-aware start, so the UTC hour follows DST)."""
    return briefing_partitions.time_window_for_partition_key(partition_key).start + BRIEFING_TIME
