"""The briefing schedule over all of 2024 (DST starts 10 March, ends 3 November).

The ticks come from Dagster's own cron iteration (a cron-based partitions definition
with the schedule's cron and timezone, so the walk is the scheduler's, DST rules
included); each tick is evaluated at its instant. Expected days come from the calendar.
"""

from collections import Counter
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from dagster import TimeWindow, TimeWindowPartitionsDefinition, build_schedule_context

from agent_reports.briefing.partitions import as_of, briefing_partitions, briefing_schedule

NEW_YORK = ZoneInfo("America/New_York")
YEAR = 2024


def _ticks() -> list[datetime]:
    walker = TimeWindowPartitionsDefinition(
        cron_schedule=briefing_schedule.cron_schedule,
        timezone=briefing_schedule.execution_timezone,
        start=datetime(YEAR - 1, 12, 1, tzinfo=NEW_YORK),
        fmt="%Y-%m-%d-%H:%M",
    )
    year = TimeWindow(datetime(YEAR, 1, 1, tzinfo=UTC), datetime(YEAR + 1, 1, 1, tzinfo=UTC))
    starts = [
        walker.time_window_for_partition_key(k).start
        for k in walker.get_partition_keys_in_time_window(year)
    ]
    return [t for t in starts if year.start <= t < year.end]


def test_one_request_per_weekday_at_nine_new_york_across_dst():
    assert briefing_schedule.execution_timezone == "America/New_York"
    requested: Counter[str] = Counter()
    for tick in _ticks():
        result = briefing_schedule.evaluate_tick(
            build_schedule_context(scheduled_execution_time=tick)
        )
        local = tick.astimezone(NEW_YORK)
        assert (local.hour, local.minute) == (9, 0), tick
        keys = [r.partition_key for r in result.run_requests or []]
        if local.weekday() >= 5:
            assert keys == [], (tick, keys)
            continue
        assert keys == [local.date().isoformat()], tick  # that same New York day
        assert [r.run_key for r in result.run_requests] == keys
        requested.update(keys)

    days = [date(YEAR, 1, 1) + timedelta(days=n) for n in range(366)]
    weekdays = {d.isoformat() for d in days if d.weekday() < 5}
    assert set(requested) == weekdays  # never skipped
    assert set(requested.values()) == {1}  # never twice
    assert len(weekdays) == 262


def test_nine_new_york_is_fourteen_utc_in_winter_and_thirteen_in_summer():
    by_day = {t.astimezone(NEW_YORK).date(): t for t in _ticks()}
    assert by_day[date(2024, 3, 8)].astimezone(UTC).hour == 14  # Friday before DST starts
    assert by_day[date(2024, 3, 11)].astimezone(UTC).hour == 13  # Monday after
    assert by_day[date(2024, 11, 1)].astimezone(UTC).hour == 13  # Friday before DST ends
    assert by_day[date(2024, 11, 4)].astimezone(UTC).hour == 14  # Monday after
    # The briefing describes exactly its tick's instant.
    for day in (date(2024, 3, 8), date(2024, 3, 11), date(2024, 11, 1), date(2024, 11, 4)):
        assert as_of(day.isoformat()) == by_day[day]


def test_partitions_are_new_york_weekdays():
    window = TimeWindow(
        datetime(2024, 3, 1, tzinfo=NEW_YORK), datetime(2024, 3, 18, tzinfo=NEW_YORK)
    )
    keys = briefing_partitions.get_partition_keys_in_time_window(window)
    expected = [
        (date(2024, 3, 1) + timedelta(days=n)).isoformat()
        for n in range(17)
        if (date(2024, 3, 1) + timedelta(days=n)).weekday() < 5
    ]
    assert keys == expected
