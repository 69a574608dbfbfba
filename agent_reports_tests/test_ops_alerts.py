"""Stale-window and failed-run alerts: one alert per incident at a real server, however
often the sensor is evaluated.

Stale-window alerts go to a real SMTP server (aiosmtpd), run-failure alerts to a real HTTP
server on loopback (the ops webhook). Runs are real in-process runs on a real SQLite
instance, stamped at simulated 2024 instants (`time.time` is shifted while a run
executes, so Dagster records the materialisation then); the registered sensor is
evaluated at fixed instants.
"""

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterInstance,
    DefaultScheduleStatus,
    Definitions,
    ScheduleDefinition,
    TimeWindow,
    build_run_status_sensor_context,
    build_sensor_context,
)

from agent_reports.briefing.partitions import briefing_partitions
from agent_reports.compliance.analysis import Materialization, Window, classify_window
from agent_reports.core.resources import DeliveryResource
from agent_reports.definitions import ANALYSES as DECLARED
from agent_reports.definitions import defs
from agent_reports.market.assets import market_report
from agent_reports.market.partitions import MARKET, market_partitions
from agent_reports.ops import ClockResource
from agent_reports.ops.alerts import freshness_alert_sensor, run_failure_alert_sensor
from agent_reports.ops.freshness import newest_due_window, policy_for

# Each declared analysis' deadline, and the UI policy built from it.
DEADLINES = {a.name: a.deadline for a in DECLARED if a.deadline}
FRESHNESS = {
    a.report_key: policy_for(a.deadline, a.schedule.time_of_day()) for a in DECLARED if a.deadline
}

STALE = "[agent_reports] {} is stale: window {} missing"


class Received(list):
    """The requests a webhook server received, and its URL."""

    url = ""


@pytest.fixture
def webhook_server() -> Iterator[Received]:
    """A real HTTP server on loopback that records every POSTed JSON body."""
    received = Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({"headers": dict(self.headers), "body": json.loads(body)})
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    received.url = f"http://127.0.0.1:{server.server_port}/hook"
    try:
        yield received
    finally:
        server.shutdown()
        server.server_close()


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _run_at(instance: DagsterInstance, monkeypatch, analysis: str, key: str, at: datetime):
    """A real in-process run of the analysis' job for `key`, recorded as if at `at`."""
    real = time.time
    offset = real() - at.timestamp()
    monkeypatch.setattr(time, "time", lambda: real() - offset)
    try:
        job = defs.resolve_job_def(f"{analysis}_job")
        result = job.execute_in_process(partition_key=key, instance=instance, raise_on_error=False)
    finally:
        monkeypatch.setattr(time, "time", real)
    assert result.success
    return result


def _run_market(instance: DagsterInstance, key: str):
    job = defs.resolve_job_def("market_job")
    return job.execute_in_process(partition_key=key, instance=instance, raise_on_error=False)


def _schedules_on(*analyses: str) -> Definitions:
    """The code location with these analyses' schedules RUNNING (as if switched on in the
    UI; test_ops_catchup proves the stored UI state through the dagster CLI)."""
    on = {f"{analysis}_job" for analysis in analyses}
    schedules = [
        ScheduleDefinition(
            name=s.name,
            cron_schedule=s.cron_schedule,
            job_name=s.job_name,
            execution_timezone=s.execution_timezone,
            default_status=DefaultScheduleStatus.RUNNING,
        )
        if s.job_name in on
        else s
        for s in defs.schedules
    ]
    return Definitions(
        assets=defs.assets,
        asset_checks=defs.asset_checks,
        jobs=defs.jobs,
        schedules=schedules,
        sensors=[freshness_alert_sensor],
        resources=defs.resources,
    )


def _evaluate(instance: DagsterInstance, definitions: Definitions, now: datetime):
    context = build_sensor_context(
        instance=instance,
        definitions=definitions,
        sensor_name=freshness_alert_sensor.name,
        resources={
            "clock": ClockResource(fixed_time=now.isoformat()),
            "delivery": DeliveryResource(),
        },
    )
    return freshness_alert_sensor.evaluate_tick(context)


def _subjects(smtp_server) -> list[str]:
    """The subjects received, sorted (a Maildir keeps no order)."""
    return sorted(m["Subject"] for m in smtp_server.messages())


@pytest.fixture
def ops_mail(smtp_server, monkeypatch):
    """Ops alerts to the real SMTP server."""
    monkeypatch.setenv("AGENT_REPORTS_SMTP_HOST", smtp_server.host)
    monkeypatch.setenv("AGENT_REPORTS_SMTP_PORT", str(smtp_server.port))
    monkeypatch.setenv("AGENT_REPORTS_SMTP_SECURITY", "none")
    monkeypatch.setenv("AGENT_REPORTS_OPS_EMAIL_TO", "oncall@example.com")
    return smtp_server


def test_missing_newest_window_alerts_once_though_an_old_one_was_backfilled(
    instance, ops_mail, monkeypatch
):
    """2024-03-08 is due at 10 March 01:00 and never ran; a backfill of 1 March at 01:30
    makes "the last report" 30 min old. The window rule still sees 8 March missing."""
    market_on = _schedules_on("market")
    _run_at(instance, monkeypatch, "market", "2024-03-07", _utc("2024-03-08T06:00"))
    _run_at(instance, monkeypatch, "market", "2024-03-01", _utc("2024-03-10T01:30"))
    now = _utc("2024-03-10T02:00")
    last = instance.get_latest_materialization_event(market_report.key)
    assert now.timestamp() - last.timestamp < 3600  # a time-since-last rule sees it fresh

    for later in (timedelta(0), timedelta(minutes=2), timedelta(hours=3)):
        data = _evaluate(instance, market_on, now + later)
        assert "market 2024-03-08" in data.skip_message
    messages = ops_mail.messages()
    assert [m["Subject"] for m in messages] == [STALE.format("market", "2024-03-08")]
    assert messages[0]["To"] == "oncall@example.com"
    assert "due 2024-03-10T01:00:00+00:00" in messages[0].get_payload()

    # Caught up: quiet. The next window due without its report is a new incident.
    _run_at(instance, monkeypatch, "market", "2024-03-08", _utc("2024-03-10T06:00"))
    assert (
        "no due window is missing"
        in _evaluate(instance, market_on, now + timedelta(hours=5)).skip_message
    )
    for _ in range(2):
        _evaluate(instance, market_on, _utc("2024-03-11T01:01"))
    assert _subjects(ops_mail) == [
        STALE.format("market", "2024-03-08"),
        STALE.format("market", "2024-03-09"),
    ]


def test_late_window_is_not_stale_once_it_arrived(instance, ops_mail, monkeypatch):
    """Lateness is the audit's business: once the window's report exists, no alert."""
    market_on = _schedules_on("market")
    _run_at(instance, monkeypatch, "market", "2024-03-07", _utc("2024-03-08T06:00"))
    _run_at(instance, monkeypatch, "market", "2024-03-08", _utc("2024-03-10T03:00"))  # due 01:00
    data = _evaluate(instance, market_on, _utc("2024-03-10T04:00"))
    assert "no due window is missing" in data.skip_message
    assert ops_mail.messages() == []
    # Evaluated before it arrived (history after `now` does not count), it was stale.
    _evaluate(instance, market_on, _utc("2024-03-10T02:00"))
    assert _subjects(ops_mail) == [STALE.format("market", "2024-03-08")]


def test_briefing_is_due_at_nine_thirty_new_york_across_dst_and_not_on_weekends(
    instance, ops_mail, monkeypatch
):
    """Friday 8 March (EST): due 14:30 UTC. Monday 11 March, after the DST change (EDT):
    due 13:30 UTC. Saturday and Sunday have no window, so nothing is due."""
    briefing_on = _schedules_on("briefing")
    _run_at(instance, monkeypatch, "briefing", "2024-03-07", _utc("2024-03-07T14:00"))

    _evaluate(instance, briefing_on, _utc("2024-03-08T14:29"))  # 09:29 EST
    assert ops_mail.messages() == []
    _evaluate(instance, briefing_on, _utc("2024-03-08T14:31"))  # 09:31 EST
    assert _subjects(ops_mail) == [STALE.format("briefing", "2024-03-08")]

    _run_at(instance, monkeypatch, "briefing", "2024-03-08", _utc("2024-03-08T15:00"))
    for weekend in ("2024-03-09T14:31", "2024-03-10T14:31", "2024-03-11T04:00"):
        data = _evaluate(instance, briefing_on, _utc(weekend))
        assert "no due window is missing" in data.skip_message, weekend
    _evaluate(instance, briefing_on, _utc("2024-03-11T13:29"))  # 09:29 EDT
    assert len(ops_mail.messages()) == 1
    _evaluate(instance, briefing_on, _utc("2024-03-11T13:31"))  # 09:31 EDT, 08:31 EST
    assert _subjects(ops_mail) == [
        STALE.format("briefing", "2024-03-08"),
        STALE.format("briefing", "2024-03-11"),
    ]


def _market_window(key: str) -> Window:
    span = market_partitions.time_window_for_partition_key(key)
    return Window("market", key, span.start, span.end, MARKET.deadline)


def _materializations(instance: DagsterInstance, key: str) -> list[Materialization]:
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=market_report.key, asset_partitions=[key]), limit=10
    ).records
    return [Materialization("market", key, r.timestamp, r.run_id) for r in records]


def test_alert_and_audit_judge_by_the_same_deadline(instance, ops_mail, monkeypatch):
    """One report a minute before its deadline, one two minutes after. A minute past each
    deadline the sensor alerts exactly for the window the audit calls late."""
    market_on = _schedules_on("market")
    on_time, late = _market_window("2024-03-08"), _market_window("2024-03-09")
    assert on_time.deadline == _utc("2024-03-10T01:00")  # the shared table: end + 25 h
    _run_at(instance, monkeypatch, "market", "2024-03-07", _utc("2024-03-08T06:00"))
    _run_at(instance, monkeypatch, "market", on_time.key, on_time.deadline - timedelta(minutes=1))
    _run_at(instance, monkeypatch, "market", late.key, late.deadline + timedelta(minutes=2))

    for window in (on_time, late):
        minute_after = window.deadline + timedelta(minutes=1)
        due = newest_due_window("market", market_partitions, minute_after, MARKET.deadline)
        assert (due.key, due.deadline) == (window.key, window.deadline)
        _evaluate(instance, market_on, window.deadline - timedelta(minutes=1))
        _evaluate(instance, market_on, minute_after)
    audit = {
        w.key: classify_window(w, _materializations(instance, w.key), [])["status"]
        for w in (on_time, late)
    }
    assert audit == {"2024-03-08": "ok", "2024-03-09": "late"}
    assert _subjects(ops_mail) == [STALE.format("market", "2024-03-09")]


def test_paused_analysis_is_not_judged(instance, ops_mail, monkeypatch):
    """The registered definitions: schedules stopped by default, so a missing window of a
    paused analysis raises nothing (as the catch-up sensor launches nothing)."""
    _run_at(instance, monkeypatch, "market", "2024-03-07", _utc("2024-03-08T06:00"))
    data = _evaluate(instance, defs, _utc("2024-03-10T02:00"))
    assert "paused, not judged: market" in data.skip_message
    assert ops_mail.messages() == []


def test_ui_policies_come_from_the_deadline_table():
    """The policies the UI shows are built from DEADLINES and sit on the registered assets;
    the briefing cron's weekdays are exactly the days that have briefing windows."""
    for analysis in ("market", "anomalies", "churn", "compliance"):
        policy = FRESHNESS[AssetKey(f"{analysis}_report")]
        assert policy.fail_window.to_timedelta() == DEADLINES[analysis].after_end
    briefing = FRESHNESS[AssetKey("briefing_report")]
    assert (briefing.deadline_cron, briefing.timezone) == ("30 9 * * 1-5", "America/New_York")
    assert briefing.lower_bound_delta == timedelta(minutes=30)  # from the 09:00 schedule
    for key, policy in FRESHNESS.items():
        (spec,) = defs.resolve_assets_def(key).specs
        assert spec.freshness_policy == policy
    fortnight = TimeWindow(_utc("2024-03-04T12:00"), _utc("2024-03-18T12:00"))
    keys = briefing_partitions.get_partition_keys_in_time_window(fortnight)
    assert {datetime.fromisoformat(key).isoweekday() for key in keys} == {1, 2, 3, 4, 5}
    assert len(keys) == 10


def test_failed_run_alerts_once(instance, webhook_server, monkeypatch, tmp_path):
    monkeypatch.setenv("AGENT_REPORTS_OPS_WEBHOOK_URL", webhook_server.url)
    market_dir = tmp_path / "data" / "market"
    market_dir.mkdir(parents=True)
    (market_dir / "prices.csv").write_text("date,ticker,open,high,low,close,volume\nbad\n")
    monkeypatch.setenv("AGENT_REPORTS_SOURCE", "files")
    monkeypatch.setenv("AGENT_REPORTS_DATA_DIR", str(tmp_path / "data"))
    result = _run_market(instance, "2024-03-09")
    assert not result.success

    for _ in range(2):  # e.g. the daemon restarted before storing its cursor
        context = build_run_status_sensor_context(
            sensor_name=run_failure_alert_sensor.name,
            dagster_event=result.get_run_failure_event(),
            dagster_instance=instance,
            dagster_run=result.dagster_run,
            resources={"delivery": DeliveryResource()},
        ).for_run_failure()
        run_failure_alert_sensor(context)

    assert len(webhook_server) == 1
    body = webhook_server[0]["body"]
    assert (body["alert"], body["job"], body["run_id"], body["partition"]) == (
        "run_failure",
        "market_job",
        result.run_id,
        "2024-03-09",
    )
    assert "prices.csv" in body["error"]
    assert webhook_server[0]["headers"]["Idempotency-Key"] == body["idempotency_key"]
