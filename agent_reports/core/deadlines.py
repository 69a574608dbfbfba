"""When each analysis' report for a window is due: one table, three readers.

The freshness policies the UI shows (ops/freshness.py), the stale-window alert
(ops/alerts.py) and the compliance audit's on-time/late classification
(compliance/analysis.py) all read `DEADLINES`, so the alert and the audit cannot disagree
about whether a window was late. Pure Python, no Dagster: the audit's analysis module
must stay importable without it.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo


@dataclass(frozen=True)
class Deadline:
    """When a window's report is due: `after_end` after the window ends (elapsed time), or
    at `local_time` in `timezone` on the window's own day (wall-clock time, so it follows
    DST). `weekdays` is the cron day-of-week field of the days that have windows; only
    the UI's cron policy needs it, the partitions themselves already skip the others."""

    after_end: timedelta | None = None
    local_time: time | None = None
    timezone: str = "UTC"
    weekdays: str = "*"

    def __post_init__(self) -> None:
        if (self.after_end is None) == (self.local_time is None):
            raise ValueError("a deadline is either after_end or local_time, not both")

    def due(self, window_start: datetime, window_end: datetime) -> datetime:
        """The instant the report for [window_start, window_end) is due."""
        if self.after_end is not None:
            return window_end.astimezone(UTC) + self.after_end
        zone = ZoneInfo(self.timezone)
        day = window_start.astimezone(zone).date()
        return datetime.combine(day, self.local_time, tzinfo=zone)


DEADLINES: dict[str, Deadline] = {
    "market": Deadline(after_end=timedelta(hours=25)),
    "anomalies": Deadline(after_end=timedelta(hours=2)),
    "churn": Deadline(after_end=timedelta(days=8)),
    "compliance": Deadline(after_end=timedelta(days=32)),
    "briefing": Deadline(local_time=time(9, 30), timezone="America/New_York", weekdays="1-5"),
}


def deadline(analysis: str, window_start: datetime, window_end: datetime) -> datetime:
    """When `analysis`' report for the window [window_start, window_end) is due."""
    return DEADLINES[analysis].due(window_start, window_end)
