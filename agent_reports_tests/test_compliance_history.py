"""The audit checked against a month of generated history with known gaps and failures.

On a real (SQLite) instance, the market job runs in process for the days whose deadline
falls in March 2024, at the instants a scheduler would have run them: most on time, two
never, one late, one after the month's end, one failing on bad input, one twice, one
degraded by an LLM answering nonsense, one failing and then retried. The ledger gets
alerts and emails sent, and failed, in and around the month. The compliance job then
audits March against the same instance and ledger, and its report must hold exactly
those counts, windows and deliveries.

The runs happen now, but must look as if they ran in 2024: `time.time` (which stamps
Dagster's events) and the ledger's clock are shifted to the simulated instant while
each run executes. Everything else is real: runs, event log, run records, ledger.
"""

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from dagster import build_schedule_context

from agent_reports.core import delivery
from agent_reports.core.delivery import DeliveryError, DeliveryKey, DeliveryLedger
from agent_reports.definitions import defs

MONTH = "2024-03-01"
AUDIT_AT = datetime(2024, 4, 1, 0, 0, 5, tzinfo=UTC)
# March's market windows: the days whose deadline (end + 25 h) falls in March.
MARKET_DAYS = [datetime(2024, 2, 28, tzinfo=UTC) + timedelta(days=n) for n in range(31)]
NEVER_RUN = {"2024-03-10", "2024-03-11"}
AFTER_MONTH_END = "2024-03-28"  # run on 2 April: missing as of the audit
FAILED = "2024-03-15"
TWICE = "2024-03-05"
LATE = "2024-03-20"  # run 3 days later, past its deadline of 22 March 01:00
DEGRADED = "2024-03-25"
RETRIED = "2024-03-26"  # fails, then a retry run succeeds


class ShiftedClock:
    """Makes this process's `time.time` and the ledger's clock read a simulated instant."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self._real = time.time
        self._monkeypatch = monkeypatch

    def set(self, instant: datetime) -> None:
        offset = self._real() - instant.timestamp()
        self._monkeypatch.setattr(time, "time", lambda: self._real() - offset)
        self._monkeypatch.setattr(
            delivery, "_now", lambda: datetime.fromtimestamp(self._real() - offset, UTC)
        )


def _bad_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    market = tmp_path / "bad" / "market"
    market.mkdir(parents=True, exist_ok=True)
    (market / "prices.csv").write_text("date,ticker,open,high,low,close,volume\nnot-a-date\n")
    monkeypatch.setenv("AGENT_REPORTS_SOURCE", "files")
    monkeypatch.setenv("AGENT_REPORTS_DATA_DIR", str(tmp_path / "bad"))


def _good_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENT_REPORTS_SOURCE", raising=False)
    monkeypatch.delenv("AGENT_REPORTS_DATA_DIR", raising=False)


def _market_run(instance, clock, key: str, at: datetime, tags=None) -> str:
    clock.set(at)
    result = defs.resolve_job_def("market_job").execute_in_process(
        partition_key=key, instance=instance, tags=tags or {}, raise_on_error=False
    )
    return result.run_id if result.success else "failed:" + result.run_id


def _generate_market_history(instance, clock, tmp_path, monkeypatch, llm_server) -> dict:
    """The month's market runs, as described in the module docstring; run ids by window."""
    runs: dict[str, list[str]] = {}

    def run(key: str, at: datetime, tags=None) -> None:
        runs.setdefault(key, []).append(_market_run(instance, clock, key, at, tags))

    run("2024-02-27", datetime(2024, 2, 28, 6, tzinfo=UTC))  # due in February: not audited
    for day in MARKET_DAYS:
        key, scheduled = day.date().isoformat(), day + timedelta(days=1, hours=6)
        if key in NEVER_RUN:
            continue
        if key == AFTER_MONTH_END:
            run(key, datetime(2024, 4, 2, 6, tzinfo=UTC))
        elif key == LATE:
            run(key, scheduled + timedelta(days=2))
        elif key in (FAILED, RETRIED):
            _bad_source(tmp_path, monkeypatch)
            run(key, scheduled)
            _good_source(monkeypatch)
            if key == RETRIED:
                parent = runs[key][0].removeprefix("failed:")
                tags = {"dagster/parent_run_id": parent, "dagster/retry_number": "1"}
                run(key, scheduled + timedelta(minutes=30), tags)
        elif key == DEGRADED:
            llm_server.use(monkeypatch)
            invented = {"title": "t", "detail": "d", "subjects": ["NOPE"]}
            llm_server.reply_json({"summary": "s", "findings": [invented]})
            run(key, scheduled)
            monkeypatch.setenv("AGENT_REPORTS_ANALYST", "offline")
        else:
            run(key, scheduled)
            if key == TWICE:
                run(key, scheduled + timedelta(hours=6))
    return runs


def _seed_ledger(clock: ShiftedClock) -> None:
    ledger = DeliveryLedger()

    def refused() -> None:
        raise DeliveryError("recipient refused: 550 no such user")

    alert = ("anomalies", "2024-03-12-08:00")
    sends = [
        ("2024-02-20T14:00", ("briefing", "2024-02-20", "team@example.com", "v1"), None),
        ("2024-03-12T09:00", (*alert, "oncall@example.com", "severity:high"), None),
        ("2024-03-12T09:00", (*alert, "webhook:0123456789abcdef", "severity:high"), None),
        ("2024-03-18T07:00", ("churn", "2024-03-11", "nobody@example.com", "abc"), refused),
        ("2024-04-01T00:30", ("market", "2024-03-31", "desk@example.com", "x"), None),
    ]
    for at, key, send in sends:
        clock.set(datetime.fromisoformat(at).replace(tzinfo=UTC))
        ledger.deliver_once(DeliveryKey(*key), send or (lambda: None))
    ledger.engine.dispose()


def _audit(instance, clock, at: datetime, monkeypatch: pytest.MonkeyPatch, logs: Path):
    """The compliance job at `at`, over an empty log folder (the logs are another test's)."""
    clock.set(at)
    monkeypatch.setenv("AGENT_REPORTS_SOURCE", "files")
    monkeypatch.setenv("AGENT_REPORTS_DATA_DIR", str(logs))
    return defs.resolve_job_def("compliance_job").execute_in_process(
        partition_key=MONTH, instance=instance
    )


def test_the_audit_finds_the_known_gaps_and_failures(
    instance, tmp_path, monkeypatch, llm_server, isolated_dirs
):
    monkeypatch.setenv("AGENT_REPORTS_ANALYST", "offline")
    clock = ShiftedClock(monkeypatch)
    runs = _generate_market_history(instance, clock, tmp_path, monkeypatch, llm_server)
    assert runs[FAILED][0].startswith("failed:") and runs[RETRIED][0].startswith("failed:")
    assert not runs[RETRIED][1].startswith("failed:")
    _seed_ledger(clock)

    (tmp_path / "no_logs" / "logs").mkdir(parents=True)
    result = _audit(instance, clock, AUDIT_AT, monkeypatch, tmp_path / "no_logs")
    path = isolated_dirs / "reports" / "compliance" / f"{MONTH}.json"
    record = json.loads(path.read_text())
    metrics = record["metrics"]

    assert metrics["coverage"]["market"] == {
        "windows": 31,
        "ok": 26,
        "late": 1,
        "missing": 3,
        "failed": 1,
        "not scheduled": 0,
        "degraded": 1,
        "re-run": 1,
        "retried": 1,
        "failed attempts": 1,
    }
    # The other analyses never ran in this instance: their windows were not scheduled,
    # apart from the market's gaps, which are missing (the market ran before them).
    # signups: the declared analysis the repo ships (agent_reports/defs/signups/).
    due = {"anomalies": 744, "briefing": 21, "churn": 4, "signups": 31}
    for analysis, windows in due.items():
        counts = metrics["coverage"][analysis]
        assert (counts["windows"], counts["not scheduled"], counts["missing"]) == (windows,) * 2 + (
            0,
        )

    market = {w["window"]: w for w in metrics["problem_windows"] if w["analysis"] == "market"}
    assert {k: (w["status"], w["flags"]) for k, w in market.items()} == {
        "2024-03-10": ("missing", []),
        "2024-03-11": ("missing", []),
        AFTER_MONTH_END: ("missing", []),
        FAILED: ("failed", []),
        TWICE: ("ok", ["re-run"]),
        LATE: ("late", []),
        DEGRADED: ("ok", ["degraded"]),
        RETRIED: ("ok", ["retried", "failed attempts"]),
    }
    # Evidence: the run ids of each window, and when its report first appeared.
    assert market[FAILED]["run_ids"] == [runs[FAILED][0].removeprefix("failed:")]
    assert market[TWICE]["run_ids"] == sorted(runs[TWICE])
    assert set(market[RETRIED]["run_ids"]) == {r.removeprefix("failed:") for r in runs[RETRIED]}
    assert market[LATE]["first_materialized"].startswith("2024-03-23T06:00")
    assert market[LATE]["hours_after_window_end"] == pytest.approx(54.0, abs=0.1)
    assert market[RETRIED]["retries"] == 1

    assert [
        (d["kind"], d["channel"], d["report"], d["recipient"], d["status"])
        for d in metrics["deliveries"]
    ] == [
        ("alert", "email", "anomalies", "oncall@example.com", "sent"),
        ("alert", "webhook", "anomalies", "webhook:0123456789abcdef", "sent"),
        ("report email", "email", "churn", "nobody@example.com", "failed"),
    ]
    assert "550 no such user" in metrics["deliveries"][2]["error"]
    assert metrics["delivery_counts"] == {"alert": {"sent": 2}, "report email": {"failed": 1}}

    [gaps] = [c for c in result.get_asset_check_evaluations() if c.check_name.startswith("every")]
    assert gaps.passed is False
    assert gaps.metadata["gaps"].value == 3 + 1
    assert "27 of 31 scheduled windows produced their report" in record["summary"]
    assert "800 more were not scheduled" in record["summary"]
    markdown = path.with_suffix(".md").read_text()
    assert "| anomalies | 2024-02-29 21:00 → 2024-03-31 20:00 | 744 |" in markdown
    assert "| market | 2024-03-10 → 2024-03-11 | 2 | missing |" in markdown
    # No log file: the log half of the audit is unknown (a failing error check), not clean.
    assert metrics["log_scan"]["verdict"] == "unknown"
    assert metrics["log_scan"]["reasons"] == ["no log file found"]
    [logs_read] = [
        c for c in result.get_asset_check_evaluations() if c.check_name.startswith("logs")
    ]
    assert logs_read.passed is False

    # Re-audited later, after another run of a missing day: history after the month's end
    # does not count, so the report is the same, byte for byte.
    before = {ext: path.with_suffix(f".{ext}").read_bytes() for ext in ("json", "md", "html")}
    _good_source(monkeypatch)
    late_run = _market_run(instance, clock, "2024-03-10", datetime(2024, 4, 3, 6, tzinfo=UTC))
    assert not late_run.startswith("failed:")
    _audit(instance, clock, datetime(2024, 4, 3, 7, tzinfo=UTC), monkeypatch, tmp_path / "no_logs")
    after = {ext: path.with_suffix(f".{ext}").read_bytes() for ext in ("json", "md", "html")}
    assert after == before


def test_the_schedule_audits_the_month_just_ended():
    schedule = defs.resolve_schedule_def("compliance_job_schedule")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("0 0 1 * *", "UTC")
    context = build_schedule_context(scheduled_execution_time=datetime(2024, 4, 1, tzinfo=UTC))
    [request] = list(schedule.evaluate_tick(context).run_requests)
    assert (request.partition_key, request.run_key) == (MONTH, MONTH)
