"""Healthchecks-style pings: what a real HTTP server on loopback receives for real runs.

Runs are real in-process runs on a real SQLite instance (market_job, the implicit asset job
the UI launches, and a small job evaluated mid-run); the ping sensor is evaluated as the
daemon would, with the durable delivery ledger under the test's state folder. The ping URL
holds a secret path segment that must never reach a log, a tick message or the ledger.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from dagster import DagsterInstance, build_sensor_context, job, op

from agent_reports.core.resources import DeliveryResource
from agent_reports.definitions import defs
from agent_reports.market.assets import market_analysis, market_prices, market_report
from agent_reports.ops import ClockResource
from agent_reports.ops.pings import LOOKBACK, MAX_ATTEMPTS, ping_url, run_ping_sensor

SECRET = "0d6f2b1c-5c3e-4c1a-9f43-secret00c0de"
PARTITION = "2024-03-09"


@dataclass
class PingServer:
    """A real HTTP server on loopback: records each ping, answers with `status`."""

    port: int = 0
    status: int = 200
    received: list[dict] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ping/{SECRET}"

    def pings(self) -> list[tuple[str, str]]:
        """(event, rid) of every request received, in arrival order."""
        prefix = f"/ping/{SECRET}"
        events = {prefix + "/start": "start", prefix: "success", prefix + "/fail": "fail"}
        return [(events[r["path"]], r["rid"]) for r in self.received]


@pytest.fixture
def ping_server() -> Iterator[PingServer]:
    state = PingServer()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            parts = urlsplit(self.path)
            rid = parse_qs(parts.query).get("rid", [""])[0]
            state.received.append({"path": parts.path, "rid": rid, "body": body})
            self.send_response(state.status)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_port
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def no_ping_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the URLs a test sets, never one from the developer's shell."""
    for analysis in ("MARKET", "ANOMALIES", "CHURN", "COMPLIANCE", "BRIEFING"):
        monkeypatch.delenv(f"AGENT_REPORTS_PING_URL_{analysis}", raising=False)


def evaluate(instance: DagsterInstance, now: datetime | None = None) -> str:
    """One sensor evaluation, as a daemon tick would run it; returns the tick's message."""
    context = build_sensor_context(
        instance=instance,
        resources={
            "clock": ClockResource(fixed_time=now.isoformat() if now else None),
            "delivery": DeliveryResource(),
        },
    )
    data = run_ping_sensor.evaluate_tick(context)
    assert not data.run_requests
    return data.skip_message or ""


def run_market(instance: DagsterInstance):
    job_def = defs.resolve_job_def("market_job")
    return job_def.execute_in_process(
        partition_key=PARTITION, instance=instance, raise_on_error=False
    )


def break_market_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the next market run fail: a malformed prices file in the files source."""
    market_dir = tmp_path / "data" / "market"
    market_dir.mkdir(parents=True)
    (market_dir / "prices.csv").write_text("date,ticker,open,high,low,close,volume\nbad\n")
    monkeypatch.setenv("AGENT_REPORTS_SOURCE", "files")
    monkeypatch.setenv("AGENT_REPORTS_DATA_DIR", str(tmp_path / "data"))


def ledger_rows() -> list[dict]:
    return DeliveryResource().ledger().entries("ping:market")


def test_each_run_pinged_once_in_order(instance, ping_server, monkeypatch, tmp_path):
    monkeypatch.setenv("AGENT_REPORTS_PING_URL_MARKET", ping_server.url)
    good = run_market(instance)
    assert good.success
    break_market_input(tmp_path, monkeypatch)
    bad = run_market(instance)
    assert not bad.success

    message = evaluate(instance)
    expected = [
        ("start", good.run_id),
        ("success", good.run_id),
        ("start", bad.run_id),
        ("fail", bad.run_id),
    ]
    assert ping_server.pings() == expected
    assert ping_server.received[1]["body"] == f"market_job {PARTITION} run {good.run_id}: success\n"
    assert f"market fail run {bad.run_id}: sent" in message

    # Re-evaluated, e.g. after a daemon restart: the ledger knows all four were sent.
    for _ in range(2):
        assert evaluate(instance).startswith("no new pings")
    assert ping_server.pings() == expected
    assert sorted((r["partition"], r["recipient"], r["status"]) for r in ledger_rows()) == sorted(
        (rid, event, "sent") for event, rid in expected
    )


def test_start_is_pinged_while_the_run_is_in_progress(instance, ping_server, monkeypatch):
    """A run seen mid-flight gets /start at once and its finish at a later evaluation; a run
    without pool information (an op job) maps to its analysis by the job name."""
    monkeypatch.setenv("AGENT_REPORTS_PING_URL_MARKET", ping_server.url)
    seen_during_run: list[list[tuple[str, str]]] = []

    @op
    def evaluate_sensor_mid_run():
        evaluate(instance)
        seen_during_run.append(ping_server.pings())

    @job(name="market_job")
    def tiny_market_job():
        evaluate_sensor_mid_run()

    result = tiny_market_job.execute_in_process(instance=instance)
    assert result.success
    assert seen_during_run == [[("start", result.run_id)]]
    evaluate(instance)
    assert ping_server.pings() == [("start", result.run_id), ("success", result.run_id)]


def test_ui_materialisation_is_pinged_by_pool(instance, ping_server, monkeypatch):
    """Materialising from the UI runs `__ASSET_JOB`: the pool still names the analysis."""
    monkeypatch.setenv("AGENT_REPORTS_PING_URL_MARKET", ping_server.url)
    asset_job = defs.resolve_implicit_global_asset_job_def()
    result = asset_job.execute_in_process(
        partition_key=PARTITION,
        instance=instance,
        asset_selection=[market_prices.key, market_analysis.key, market_report.key],
    )
    assert result.success and result.dagster_run.job_name == "__ASSET_JOB"
    evaluate(instance)
    assert ping_server.pings() == [("start", result.run_id), ("success", result.run_id)]


def test_unconfigured_analysis_is_not_pinged(instance, ping_server, monkeypatch):
    assert run_market(instance).success
    assert "no AGENT_REPORTS_PING_URL_<ANALYSIS> is set" in evaluate(instance)
    monkeypatch.setenv("AGENT_REPORTS_PING_URL_CHURN", ping_server.url)  # another analysis
    assert evaluate(instance).startswith("no new pings (1 recent runs)")
    assert ping_server.received == []
    assert ledger_rows() == []


def test_server_error_is_logged_without_url_and_retried(instance, ping_server, monkeypatch, capfd):
    """The tick log (the sensor's console output here) names the analysis and the status."""
    monkeypatch.setenv("AGENT_REPORTS_PING_URL_MARKET", ping_server.url)
    result = run_market(instance)
    ping_server.status = 500
    capfd.readouterr()  # drop the run's own output
    message = evaluate(instance)
    log = capfd.readouterr().err
    # The /start failed, so the success is held back: it must not overtake its start.
    assert ping_server.pings() == [("start", result.run_id)]
    assert f"market start run {result.run_id}: failed (ping answered HTTP 500)" in message
    assert f"ping market start run {result.run_id}: failed (ping answered HTTP 500)" in log
    [row] = ledger_rows()
    assert (row["recipient"], row["status"], row["attempts"]) == ("start", "failed", 1)

    ping_server.status = 200
    evaluate(instance)
    evaluate(instance)
    log += capfd.readouterr().err
    assert f"ping market success run {result.run_id}: sent" in log
    assert ping_server.pings() == [("start", result.run_id)] * 2 + [("success", result.run_id)]
    assert [r["status"] for r in ledger_rows()] == ["sent", "sent"]
    everything = log + message + repr(ledger_rows())
    assert SECRET not in everything and str(ping_server.port) not in everything


def test_dead_endpoint_does_not_hold_up_other_analyses(instance, ping_server, monkeypatch):
    """Market's endpoint refuses connections; the anomalies pings still go out, and the
    sensor evaluation itself succeeds."""
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    monkeypatch.setenv("AGENT_REPORTS_PING_URL_MARKET", f"http://127.0.0.1:{dead_port}/{SECRET}")
    monkeypatch.setenv("AGENT_REPORTS_PING_URL_ANOMALIES", ping_server.url)
    market = run_market(instance)

    @op
    def scan():
        pass

    @job(name="anomalies_job")
    def tiny_anomalies_job():
        scan()

    anomalies = tiny_anomalies_job.execute_in_process(instance=instance)
    message = evaluate(instance)
    assert f"market start run {market.run_id}: failed (ping unreachable" in message
    assert SECRET not in message and str(dead_port) not in message
    assert ping_server.pings() == [("start", anomalies.run_id), ("success", anomalies.run_id)]


def test_gives_up_after_max_attempts(instance, ping_server, monkeypatch):
    """A check that keeps refusing (deleted: 404) is not hammered for the whole look-back."""
    monkeypatch.setenv("AGENT_REPORTS_PING_URL_MARKET", ping_server.url)
    result = run_market(instance)
    ping_server.status = 404
    for _ in range(2 * MAX_ATTEMPTS + 3):
        evaluate(instance)
    rid = result.run_id
    assert ping_server.pings() == [("start", rid)] * MAX_ATTEMPTS + [("success", rid)] * (
        MAX_ATTEMPTS
    )
    assert {(r["recipient"], r["status"], r["attempts"]) for r in ledger_rows()} == {
        ("start", "failed", MAX_ATTEMPTS),
        ("success", "failed", MAX_ATTEMPTS),
    }


def test_runs_older_than_the_lookback_are_left_alone(instance, ping_server, monkeypatch):
    monkeypatch.setenv("AGENT_REPORTS_PING_URL_MARKET", ping_server.url)
    assert run_market(instance).success
    evaluate(instance, datetime.now(UTC) + LOOKBACK + timedelta(minutes=1))
    assert ping_server.received == []


def test_ping_url_keeps_the_query_and_adds_the_run_id():
    rid = "9b2f7a58-8f5e-4a0c-9d6b-1c2d3e4f5a6b"
    assert ping_url("https://hc.example/ping/k/slug/?create=1", "fail", rid) == (
        f"https://hc.example/ping/k/slug/fail?create=1&rid={rid}"
    )
    assert ping_url("https://hc-ping.com/u", "success", rid) == f"https://hc-ping.com/u?rid={rid}"
