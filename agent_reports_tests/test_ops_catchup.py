"""The catch-up sensor after a simulated daemon outage, on a real (SQLite) instance.

The market report of some days is materialised by real runs; the days in between were
"missed". The sensor is evaluated at a fixed instant; the runs it requests are then run
with the tags the daemon gives sensor runs, and the sensor is evaluated again.
"""

import os
import subprocess
from datetime import UTC, datetime, timedelta

import pytest
from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    DefaultScheduleStatus,
    PartitionKeyRange,
    build_schedule_context,
    build_schedule_from_partitioned_job,
    build_sensor_context,
)
from dateutil.relativedelta import relativedelta

from agent_reports.definitions import ANALYSES, defs
from agent_reports.market.assets import market_report
from agent_reports.market.partitions import market_job
from agent_reports.ops import ClockResource
from agent_reports.ops.catchup import CatchUp, build_catchup_sensor, missing_partitions
from agent_reports_tests.conftest import BIN

NOW = datetime(2024, 3, 10, 7, 0, tzinfo=UTC)  # after the 06:00 tick for 2024-03-09
MATERIALISED = ["2024-03-03", "2024-03-05"]  # ran before / between outages
WINDOW_DAYS = 7
CATCHUPS = [analysis.catchup_spec() for analysis in ANALYSES if analysis.catchup]


def _running_market() -> CatchUp:
    """The market spec with its schedule switched on (stored state needs the UI/daemon)."""
    schedule = build_schedule_from_partitioned_job(
        market_job, hour_of_day=6, minute_of_hour=0, default_status=DefaultScheduleStatus.RUNNING
    )
    return CatchUp("market", market_job, market_report, schedule, timedelta(hours=6))


def _run(instance: DagsterInstance, key: str, tags: dict[str, str] | None = None) -> bool:
    job = defs.resolve_job_def("market_job")
    result = job.execute_in_process(
        partition_key=key, instance=instance, tags=tags or {}, raise_on_error=False
    )
    return result.success


def _evaluate(sensor, instance: DagsterInstance) -> list:
    context = build_sensor_context(
        instance=instance,
        sensor_name=sensor.name,
        definitions=defs,
        resources={"clock": ClockResource(fixed_time=NOW.isoformat())},
    )
    return list(sensor.evaluate_tick(context).run_requests or [])


def _launch_like_the_daemon(instance: DagsterInstance, sensor, requests: list) -> None:
    for request in requests:
        tags = {
            **request.tags,
            "dagster/sensor_name": sensor.name,
            "dagster/run_key": request.run_key,
        }
        assert _run(instance, request.partition_key, tags)


def test_outage_is_caught_up_oldest_first_once(instance, monkeypatch):
    monkeypatch.setenv("AGENT_REPORTS_CATCHUP_WINDOW_MARKET", f"{WINDOW_DAYS}d")
    monkeypatch.setenv("AGENT_REPORTS_CATCHUP_MAX_RUNS_PER_TICK", "3")
    for key in MATERIALISED:
        assert _run(instance, key)
    spec = _running_market()
    sensor = build_catchup_sensor(spec)

    # Every day whose window ended within the 7 days before NOW and whose 06:00 tick passed.
    last_day = (NOW - timedelta(hours=6, minutes=15)).date() - timedelta(days=1)
    in_window = [last_day - timedelta(days=n) for n in range(WINDOW_DAYS - 1, -1, -1)]
    expected = [d.isoformat() for d in in_window if d.isoformat() not in MATERIALISED]
    assert expected[0] == "2024-03-04" and expected[-1] == "2024-03-09"

    first = _evaluate(sensor, instance)
    assert [r.partition_key for r in first] == expected[:3]  # bounded, oldest first
    assert all(r.run_key == r.partition_key for r in first)
    # Evaluated again before the daemon launched anything: the same answer (the daemon
    # drops repeated run keys), never a different set.
    assert [r.partition_key for r in _evaluate(sensor, instance)] == expected[:3]

    _launch_like_the_daemon(instance, sensor, first)
    second = _evaluate(sensor, instance)
    assert [r.partition_key for r in second] == expected[3:]
    _launch_like_the_daemon(instance, sensor, second)

    assert _evaluate(sensor, instance) == []
    assert instance.get_materialized_partitions(market_report.key) >= set(expected)
    runs = instance.get_run_records()
    launched = [r.dagster_run.tags.get("dagster/run_key") for r in runs]
    assert sorted(k for k in launched if k) == expected  # each missed window exactly once


def test_failed_or_queued_windows_are_not_launched_again(instance, monkeypatch, tmp_path):
    monkeypatch.setenv("AGENT_REPORTS_CATCHUP_WINDOW_MARKET", "2d")
    spec = _running_market()
    sensor = build_catchup_sensor(spec)
    first = _evaluate(sensor, instance)
    assert [r.partition_key for r in first] == ["2024-03-08", "2024-03-09"]

    # The launched run of the older window fails on bad input...
    market_dir = tmp_path / "data" / "market"
    market_dir.mkdir(parents=True)
    (market_dir / "prices.csv").write_text("date,ticker,open,high,low,close,volume\nnot-a-date\n")
    monkeypatch.setenv("AGENT_REPORTS_SOURCE", "files")
    monkeypatch.setenv("AGENT_REPORTS_DATA_DIR", str(tmp_path / "data"))
    failed = first[0]
    tags = {"dagster/sensor_name": sensor.name, "dagster/run_key": failed.run_key}
    assert not _run(instance, failed.partition_key, tags)
    assert [r.partition_key for r in _evaluate(sensor, instance)] == [first[1].partition_key]
    # ...and a run of the newer one was created but has not started (a queued run outside
    # a daemon needs a code-location origin; NOT_STARTED is the same "in flight" to us).
    pending = instance.create_run_for_job(
        defs.resolve_job_def("market_job"),
        status=DagsterRunStatus.NOT_STARTED,
        tags={"dagster/partition": first[1].partition_key},
    )
    assert instance.get_run_by_id(pending.run_id).status == DagsterRunStatus.NOT_STARTED

    assert _evaluate(sensor, instance) == []
    assert missing_partitions(spec, instance, NOW, relativedelta(days=2)) == []


def test_stopped_schedule_pauses_catch_up(instance):
    """The registered sensor, with the market schedule in its default (stopped) state."""
    sensor = defs.resolve_sensor_def("market_catchup_sensor")
    context = build_sensor_context(
        instance=instance,
        sensor_name=sensor.name,
        definitions=defs,
        resources={"clock": ClockResource(fixed_time=NOW.isoformat())},
    )
    data = sensor.evaluate_tick(context)
    assert not data.run_requests
    assert "stopped" in data.skip_message


@pytest.mark.parametrize("spec", CATCHUPS, ids=lambda spec: spec.analysis)
def test_due_time_matches_the_schedule(spec: CatchUp):
    """`due_after_end` is when the analysis' own schedule requests the window."""
    partitions_def = spec.partitions_def
    first, last = (
        partitions_def.get_partition_key_for_timestamp(
            datetime(2024, 3, day, tzinfo=UTC).timestamp()
        )
        for day in (4, 6)
    )
    for key in partitions_def.get_partition_keys_in_range(PartitionKeyRange(first, last)):
        tick = partitions_def.time_window_for_partition_key(key).end + spec.due_after_end
        result = spec.schedule.evaluate_tick(build_schedule_context(scheduled_execution_time=tick))
        assert [r.partition_key for r in result.run_requests] == [key], (spec.analysis, key)


def test_schedule_switched_on_in_the_instance_turns_catch_up_on(tmp_path):
    """The stored schedule state (what the UI toggle writes), through the dagster CLI on a
    real instance: the sensor preview catches up only while the schedule is on."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "AGENT_REPORTS_STATE_DIR": str(tmp_path / "state"),
        "AGENT_REPORTS_REPORTS_DIR": str(tmp_path / "reports"),
    }

    def dagster(*args: str) -> str:
        command = [str(BIN / "dagster"), *args, "-m", "agent_reports.definitions"]
        done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        return (done.stdout + done.stderr).decode()

    preview = ("sensor", "preview", "market_catchup_sensor")
    assert "market_job_schedule is stopped" in dagster(*preview)
    dagster("schedule", "start", "market_job_schedule")
    started = dagster(*preview)
    assert "missed window(s); launching" in started and "is stopped" not in started
    dagster("schedule", "stop", "market_job_schedule")
    assert "market_job_schedule is stopped" in dagster(*preview)
