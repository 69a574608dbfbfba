"""How fresh each analysis must be: the UI's freshness policies and the per-window rule the
alert sensor applies, both from the analysis' declared deadline (core/declaration.py).

Two views of the same deadlines, because they answer different questions:
- the Dagster freshness policies on the report assets are what the UI shows: "time since
  the last report" (market 25 h, anomalies 2 h, churn 8 days, compliance 32 days) and, for
  the briefing, "materialised between 09:00 and 09:30 New York each weekday";
- the alert judges windows, not the last report: the newest window whose deadline has
  passed must have its own report. A backfill of old windows updates "the last report"
  and would hide a missing newest window from a time-since-last rule.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterInstance,
    FreshnessPolicy,
    TimeWindow,
    TimeWindowPartitionsDefinition,
)

from agent_reports.core.deadlines import Deadline

# Only windows whose deadline passed less than this before `now` are judged: longer than
# the longest period (a month), so every analysis' newest due window is inside. Older
# windows are the compliance audit's business, never an alert.
LOOKBACK = timedelta(days=35)
# The longest a window can start before its deadline (a month, plus the 32-day allowance).
LONGEST_START_TO_DEADLINE = timedelta(days=64)


def report_key(analysis: str) -> AssetKey:
    return AssetKey(f"{analysis}_report")


def policy_for(due: Deadline, scheduled_at: timedelta) -> FreshnessPolicy:
    """The UI policy for one analysis' deadline.

    A local-time deadline becomes a cron policy whose lower bound is the analysis'
    schedule time (`scheduled_at`, wall-clock after midnight; the briefing: between 09:00
    and 09:30 New York), so the UI expects the report after the schedule ran; the others
    become "at most this long since the last report".
    """
    if due.after_end is not None:
        return FreshnessPolicy.time_window(fail_window=due.after_end)
    at = due.local_time
    return FreshnessPolicy.cron(
        deadline_cron=f"{at.minute} {at.hour} * * {due.weekdays}",
        lower_bound_delta=timedelta(hours=at.hour, minutes=at.minute) - scheduled_at,
        timezone=due.timezone,
    )


@dataclass(frozen=True)
class DueWindow:
    """One analysis window whose report was due by `deadline`."""

    analysis: str
    key: str
    window: TimeWindow
    deadline: datetime


def newest_due_window(
    analysis: str, partitions_def: TimeWindowPartitionsDefinition, now: datetime, due_rule: Deadline
) -> DueWindow | None:
    """The newest window whose deadline passed before `now`, within LOOKBACK; None before
    the partitions start (or after they end).

    Deadlines rise with the windows, so the newest due window is the last match among
    the windows starting in the latest `span`; the span doubles until one matches, which
    keeps an hourly analysis to a day of windows instead of months of them.
    """
    span = timedelta(days=1)
    while span < 2 * (LOOKBACK + LONGEST_START_TO_DEADLINE):
        newest = None
        for key in partitions_def.get_partition_keys_in_time_window(TimeWindow(now - span, now)):
            window = partitions_def.time_window_for_partition_key(key)
            due = due_rule.due(window.start, window.end)
            if now - LOOKBACK < due < now and _inside(partitions_def, window):
                newest = DueWindow(analysis, key, window, due)
        if newest is not None:
            return newest
        span *= 2
    return None


def _inside(partitions_def: TimeWindowPartitionsDefinition, window: TimeWindow) -> bool:
    """Whether the window lies within the partitions' start (and end): the key query
    also yields windows before the start."""
    end = partitions_def.end
    return window.start >= partitions_def.start and (end is None or window.end <= end)


def has_report(instance: DagsterInstance, window: DueWindow, now: datetime) -> bool:
    """Whether the window's own report was materialised before `now` (history after `now`
    does not count, so an evaluation at a past instant sees what was there then)."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(
            asset_key=report_key(window.analysis),
            asset_partitions=[window.key],
            before_timestamp=now.timestamp(),
        ),
        limit=1,
    )
    return bool(records.records)
