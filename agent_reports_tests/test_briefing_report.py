"""The briefing built from report files written by the real report writer, and emailed
once at a real SMTP server.

Fixture reports straddle the briefing's moment (Monday 2024-03-11, 09:00 New York =
13:00 UTC, the first weekday after DST starts): those a schedule had not delivered by
then must not appear, however loud.
"""

import json
from datetime import UTC, datetime, timedelta
from email.header import decode_header, make_header
from pathlib import Path

from agent_reports.briefing.partitions import as_of
from agent_reports.core.reports import Report

DAY = "2024-03-11"


def _write(root: Path, analysis: str, start: datetime, length: timedelta, **fields) -> None:
    key = start.strftime("%Y-%m-%d-%H:%M" if analysis == "anomalies" else "%Y-%m-%d")
    record = {
        "summary": f"{analysis} {key} summary",
        "findings": [],
        "metrics": {},
        **fields,
    }
    Report(
        analysis=analysis,
        partition=key,
        window_start=start.isoformat(),
        window_end=(start + length).isoformat(),
        generated_by="offline",
        input_fingerprint=f"{analysis}-{key}".ljust(32, "0"),
        prompt_version=f"{analysis}-v1",
        **record,
    ).write(root)


def _fixture_reports(root: Path) -> None:
    for day in range(7, 12):  # 03-11 ends at 03-12 00:00 UTC: after the briefing
        start = datetime(2024, 3, day, tzinfo=UTC)
        movers = [{"ticker": f"T{day}", "return_1d": 0.05}]
        _write(root, "market", start, timedelta(days=1), metrics={"top_movers": movers})
    first = datetime(2024, 3, 10, 0, tzinfo=UTC)
    for hour in range(40):  # 03-10 00:00 → 03-11 15:00 UTC
        start = first + timedelta(hours=hour)
        severity = {29: "high", 36: "critical"}.get(hour, "none")  # 05:00 and 12:00 on 03-11
        _write(root, "anomalies", start, timedelta(hours=1), metrics={"severity": severity})
    for monday in (datetime(2024, 2, 26, tzinfo=UTC), datetime(2024, 3, 4, tzinfo=UTC)):
        _write(root, "churn", monday, timedelta(days=7))
    # The week starting 03-11 ends on 03-18: must not be read.
    _write(root, "churn", datetime(2024, 3, 11, tzinfo=UTC), timedelta(days=7))


def _briefing(root: Path) -> dict:
    return json.loads((root / "briefing" / f"{DAY}.json").read_text())


def test_briefing_reads_only_what_was_delivered_by_nine(run_partition, isolated_dirs):
    root = isolated_dirs / "reports"
    _fixture_reports(root)
    assert as_of(DAY) == datetime(2024, 3, 11, 13, tzinfo=UTC)

    assert run_partition("briefing_job", DAY).success
    record = _briefing(root)
    metrics = record["metrics"]
    assert metrics["market"]["partition"] == "2024-03-10"  # 03-11 is not over yet
    assert metrics["churn"]["partition"] == "2024-03-04"  # week ending Monday 00:00
    anomalies = metrics["anomalies"]
    # Hours delivered by 13:00 (at :05 after their end): 24 ending 13:00 on 03-10 … 12:00.
    assert (anomalies["first_hour"], anomalies["last_hour"]) == (
        "2024-03-10-12:00",
        "2024-03-11-11:00",
    )
    assert anomalies["hours_found"] == 24
    assert [h["hour"] for h in anomalies["worst_hours"]] == ["2024-03-11-05:00"]
    assert anomalies["by_severity"]["critical"] == 0  # 12:00 was delivered at 13:05
    assert metrics["missing"] == []
    assert record["generated_by"] == "offline"
    assert "T10" in json.dumps(record["findings"]) and "T11" not in json.dumps(record)

    # Re-run: the same bytes (files written after 09:00 change nothing).
    before = (root / "briefing" / f"{DAY}.json").read_bytes()
    _write(root, "market", datetime(2024, 3, 12, tzinfo=UTC), timedelta(days=1))
    assert run_partition("briefing_job", DAY).success
    assert (root / "briefing" / f"{DAY}.json").read_bytes() == before


def test_missing_sources_are_named(run_partition, isolated_dirs):
    root = isolated_dirs / "reports"
    _write(root, "anomalies", datetime(2024, 3, 11, 3, tzinfo=UTC), timedelta(hours=1))
    result = run_partition("briefing_job", DAY)
    assert result.success
    missing = _briefing(root)["metrics"]["missing"]
    assert missing == ["market", "churn", "anomalies: 23 of 24 hours"]
    checks = result.get_asset_check_evaluations()
    assert [c.passed for c in checks] == [False]


def test_briefing_is_emailed_once_per_recipient(
    run_partition, isolated_dirs, smtp_server, monkeypatch
):
    _fixture_reports(isolated_dirs / "reports")
    monkeypatch.setenv("AGENT_REPORTS_SMTP_HOST", smtp_server.host)
    monkeypatch.setenv("AGENT_REPORTS_SMTP_PORT", str(smtp_server.port))
    monkeypatch.setenv("AGENT_REPORTS_SMTP_SECURITY", "none")
    monkeypatch.setenv("AGENT_REPORTS_BRIEFING_RECIPIENTS", "ny-desk@example.com, cto@example.com")

    for _ in range(2):  # a re-run (or a retry) of the day
        assert run_partition("briefing_job", DAY).success

    messages = smtp_server.messages()
    assert sorted(m["To"] for m in messages) == ["cto@example.com", "ny-desk@example.com"]
    subjects = {str(make_header(decode_header(m["Subject"]))) for m in messages}
    assert subjects == {f"[agent_reports] Morning briefing — {DAY}"}
    body = messages[0].get_payload()[0].get_payload(decode=True).decode()
    assert "2024-03-11-05:00" in body


def test_an_unknown_anomaly_hour_is_never_summarised_as_no_anomalies(tmp_path):
    """An hour whose logs could not be read is counted and listed, not taken for calm."""
    from agent_reports.briefing.analysis import briefing_inputs
    from agent_reports.briefing.prompts import offline_narrative

    first = datetime(2024, 3, 10, 12, tzinfo=UTC)
    for hour in range(24):
        severity = "unknown" if hour == 20 else "none"
        summary = "Unknown: 300 of 300 log lines unreadable" if hour == 20 else "calm"
        start = first + timedelta(hours=hour)
        metrics = {"severity": severity}
        _write(tmp_path, "anomalies", start, timedelta(hours=1), metrics=metrics, summary=summary)
    inputs = briefing_inputs(tmp_path, as_of(DAY))
    anomalies = inputs["anomalies"]
    assert anomalies["by_severity"]["unknown"] == 1 and anomalies["by_severity"]["none"] == 23
    assert [(h["hour"], h["severity"]) for h in anomalies["worst_hours"]] == [
        ("2024-03-11-08:00", "unknown")
    ]
    narrative = offline_narrative({**inputs, "missing": []})
    assert "No traffic anomalies" not in narrative.summary
    assert "unknown 1" in narrative.findings[0].detail
