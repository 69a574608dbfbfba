"""Briefing partitions and schedule: one New York weekday per partition, run at 09:00 New
York time for that same day.

Weekends are excluded from the partitions themselves, so the catch-up sensor never sees a
weekend window, and the schedule's cron says so too: `0 9 * * 1-5` in New York time, one
tick per weekday, each requesting that same day (run_key = partition key). `end_offset=1`
makes the current day a partition: the 09:00 tick requests today's briefing, not
yesterday's. The timezone makes 09:00 mean 09:00 local across both DST
changes (14:00 UTC in winter, 13:00 UTC in summer).
"""

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from dagster import (
    AssetSelection,
    DailyPartitionsDefinition,
    RunRequest,
    ScheduleEvaluationContext,
    SkipReason,
    define_asset_job,
    schedule,
)

ANALYSIS = "briefing"
POOL = ANALYSIS
START_DATE = "2024-01-01"
TIMEZONE = "America/New_York"
BRIEFING_TIME = timedelta(hours=9)  # local wall-clock time after midnight
WEEKENDS = "0 0 * * 6,0"
WEEKDAY_CRON = f"0 {int(BRIEFING_TIME.total_seconds()) // 3600} * * 1-5"

briefing_partitions = DailyPartitionsDefinition(
    start_date=START_DATE, timezone=TIMEZONE, exclusions=[WEEKENDS], end_offset=1
)

briefing_job = define_asset_job(
    name="briefing_job",
    selection=AssetSelection.groups(ANALYSIS),
    partitions_def=briefing_partitions,
    description="Latest market, anomaly and churn reports → one-page briefing → email.",
)


@schedule(
    cron_schedule=WEEKDAY_CRON,
    job=briefing_job,
    execution_timezone=TIMEZONE,
    name="briefing_job_schedule",
    description="09:00 New York, Monday to Friday: that day's briefing (run_key = the day).",
)
def briefing_schedule(context: ScheduleEvaluationContext) -> RunRequest | SkipReason:
    """The tick's own New York day (a weekday, so a partition once past the start date)."""
    day = context.scheduled_execution_time.astimezone(ZoneInfo(TIMEZONE)).date().isoformat()
    if day < START_DATE:
        return SkipReason(f"{day} is before the first briefing partition, {START_DATE}")
    return briefing_job.run_request_for_partition(partition_key=day, run_key=day)


def as_of(partition_key: str) -> datetime:
    """The instant a briefing describes: 09:00 New York on its day (wall-clock arithmetic
    on the zone-aware start, so the UTC hour follows DST)."""
    return briefing_partitions.time_window_for_partition_key(partition_key).start + BRIEFING_TIME
