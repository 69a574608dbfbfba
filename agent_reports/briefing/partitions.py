"""The briefing, declared once: one New York weekday per partition, run at 09:00 New York
time for that same day, emailed to AGENT_REPORTS_BRIEFING_RECIPIENTS; due at 09:30.

Weekends are excluded from the partitions themselves, so the catch-up sensor never sees a
weekend window, and the schedule's cron says so too: `0 9 * * 1-5` in New York time, one
tick per weekday, each requesting that same day (run_key = partition key). `end_offset=1`
makes the current day a partition: the 09:00 tick requests today's briefing, not
yesterday's. The timezone makes 09:00 mean 09:00 local across both DST
changes (14:00 UTC in winter, 13:00 UTC in summer).
"""

from datetime import datetime, time, timedelta

from dagster import DailyPartitionsDefinition

from agent_reports.core.declaration import Analysis, Deadline, Schedule

TIMEZONE = "America/New_York"

BRIEFING = Analysis(
    name="briefing",
    partitions=DailyPartitionsDefinition(
        start_date="2024-01-01", timezone=TIMEZONE, exclusions=["0 0 * * 6,0"], end_offset=1
    ),
    schedule=Schedule(
        cron="0 9 * * 1-5",
        description="09:00 New York, Monday to Friday: that day's briefing (run_key = the day).",
    ),
    lag=timedelta(hours=-15),  # 09:00 of the day itself, 15 h before the day ends
    pool="briefing",
    deadline=Deadline(local_time=time(9, 30), timezone=TIMEZONE, weekdays="1-5"),
    recipients_variable="AGENT_REPORTS_BRIEFING_RECIPIENTS",
    owner="team:agent-reports",
    cadence="weekdays",
    description="Latest market, anomaly and churn reports → one-page briefing → email.",
    package=__package__,
)

# The names the folder's assets, checks and tests use.
ANALYSIS, POOL, briefing_partitions = BRIEFING.name, BRIEFING.pool, BRIEFING.partitions
briefing_schedule = BRIEFING.schedule_def
BRIEFING_TIME = BRIEFING.schedule.time_of_day()  # local wall-clock time after midnight


def as_of(partition_key: str) -> datetime:
    """The instant a briefing describes: 09:00 New York on its day (wall-clock arithmetic
    on the zone-aware start, so the UTC hour follows DST)."""
    return briefing_partitions.time_window_for_partition_key(partition_key).start + BRIEFING_TIME
