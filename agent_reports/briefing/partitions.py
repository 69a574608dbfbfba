"""The briefing as declared in analysis.yaml (core/declaration.py reads it), and the
instant each briefing describes."""

from datetime import datetime

from agent_reports.core.declaration import declare

BRIEFING = declare(__package__)
# The names the folder's assets, checks and tests use.
ANALYSIS, POOL, briefing_partitions = BRIEFING.name, BRIEFING.pool, BRIEFING.partitions
briefing_schedule = BRIEFING.schedule_def
BRIEFING_TIME = BRIEFING.schedule.time_of_day()  # 09:00, local wall-clock time


def as_of(partition_key: str) -> datetime:
    """The instant a briefing describes: 09:00 New York on its day (wall-clock arithmetic
    on the zone-aware start, so the UTC hour follows DST)."""
    return briefing_partitions.time_window_for_partition_key(partition_key).start + BRIEFING_TIME
