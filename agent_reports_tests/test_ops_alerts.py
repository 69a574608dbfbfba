"""Stale-analysis and failed-run alerts: one alert per incident at a real server, however
often the sensor is evaluated.

Freshness alerts go to a real SMTP server (aiosmtpd), run-failure alerts to a real HTTP
server on loopback (the ops webhook). Runs are real in-process runs on a real SQLite
instance; the freshness sensor is evaluated at instants fixed relative to the recorded
materialisation.
"""

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from dagster import (
    DagsterInstance,
    build_run_status_sensor_context,
    build_sensor_context,
)

from agent_reports.core.resources import DeliveryResource
from agent_reports.definitions import defs
from agent_reports.market.assets import market_report
from agent_reports.ops import ClockResource
from agent_reports.ops.alerts import freshness_alert_sensor, run_failure_alert_sensor
from agent_reports.ops.freshness import FRESHNESS, freshness_state


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[DagsterInstance]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    with DagsterInstance.local_temp(tempdir=str(home)) as instance:
        yield instance


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


def _run_market(instance: DagsterInstance, key: str):
    job = defs.resolve_job_def("market_job")
    return job.execute_in_process(partition_key=key, instance=instance, raise_on_error=False)


def _evaluate_freshness(instance: DagsterInstance, now: datetime):
    context = build_sensor_context(
        instance=instance,
        definitions=defs,
        sensor_name=freshness_alert_sensor.name,
        resources={
            "clock": ClockResource(fixed_time=now.isoformat()),
            "delivery": DeliveryResource(),
        },
    )
    return freshness_alert_sensor.evaluate_tick(context)


def _last_update(instance: DagsterInstance) -> datetime:
    event = instance.get_latest_materialization_event(market_report.key)
    return datetime.fromtimestamp(event.timestamp, UTC)


def test_stale_market_alerts_once_per_incident(instance, smtp_server, monkeypatch):
    monkeypatch.setenv("AGENT_REPORTS_SMTP_HOST", smtp_server.host)
    monkeypatch.setenv("AGENT_REPORTS_SMTP_PORT", str(smtp_server.port))
    monkeypatch.setenv("AGENT_REPORTS_SMTP_SECURITY", "none")
    monkeypatch.setenv("AGENT_REPORTS_OPS_EMAIL_TO", "oncall@example.com")
    assert _run_market(instance, "2024-03-09").success
    first_update = _last_update(instance)
    limit = FRESHNESS[market_report.key].fail_window.to_timedelta()

    _evaluate_freshness(instance, first_update + limit - timedelta(minutes=1))
    assert smtp_server.messages() == []  # still fresh: 24 h 59 min

    for later in (timedelta(0), timedelta(minutes=1), timedelta(hours=3)):
        data = _evaluate_freshness(instance, first_update + limit + later)
        assert "market_report" in data.skip_message
    messages = smtp_server.messages()
    assert len(messages) == 1  # one incident, three evaluations
    assert messages[0]["To"] == "oncall@example.com"
    assert messages[0]["Subject"] == "[agent_reports] market_report is stale"

    # A new report ends the incident; going stale again is a new one.
    assert _run_market(instance, "2024-03-10").success
    second_update = _last_update(instance)
    assert second_update > first_update
    for _ in range(2):
        _evaluate_freshness(instance, second_update + limit + timedelta(minutes=5))
    assert len(smtp_server.messages()) == 2


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


def test_briefing_deadline_is_nine_thirty_new_york():
    """The cron policy: a briefing materialised 09:10 is fresh until the next weekday's
    09:30; one materialised at 08:00 (early) or not since Friday fails at 09:30."""
    policy = FRESHNESS[next(k for k in FRESHNESS if k.to_user_string() == "briefing_report")]
    made = datetime(2024, 3, 8, 14, 10, tzinfo=UTC)  # Friday 09:10 EST
    assert freshness_state(policy, made, datetime(2024, 3, 11, 13, 29, tzinfo=UTC)).state == "PASS"
    late = freshness_state(policy, made, datetime(2024, 3, 11, 13, 31, tzinfo=UTC))  # Mon EDT
    assert late.state == "FAIL" and late.incident == "deadline:2024-03-11T13:30:00+00:00"
    early = datetime(2024, 3, 11, 12, 0, tzinfo=UTC)  # Monday 08:00 EDT
    assert freshness_state(policy, early, datetime(2024, 3, 11, 13, 45, tzinfo=UTC)).state == "FAIL"
