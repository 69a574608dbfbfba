"""When an analysis' report for a window is due: one rule per analysis, three readers.

Each analysis declares its `Deadline` once (core/declaration.py). The freshness policy the
UI shows (ops/freshness.py), the stale-window alert (ops/alerts.py) and the compliance
audit's on-time/late classification (compliance/analysis.py) all apply that one rule, so
the alert and the audit cannot disagree about whether a window was late. Pure Python, no
Dagster: the audit's analysis module must stay importable without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any
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

    def to_dict(self) -> dict[str, Any]:
        """As JSON (the report asset's metadata carries it to the alerts and the audit)."""
        if self.after_end is not None:
            return {"after_end_seconds": self.after_end.total_seconds()}
        at = self.local_time.isoformat(timespec="minutes")  # type: ignore[union-attr]
        return {"local_time": at, "timezone": self.timezone, "weekdays": self.weekdays}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Deadline:
        if "after_end_seconds" in data:
            return cls(after_end=timedelta(seconds=data["after_end_seconds"]))
        return cls(
            local_time=time.fromisoformat(data["local_time"]),
            timezone=data["timezone"],
            weekdays=data["weekdays"],
        )
