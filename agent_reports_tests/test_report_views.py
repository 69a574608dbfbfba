"""What a reader sees in every report view (HTML, Markdown, e-mail): number formats, one
call-out per severity, "none" for empty tables, windows labelled with their zone, charts
as inline SVG with a text table in the Markdown, the compliance audit's ranges and its
"not scheduled" windows, the briefing's wording and the demo's churn spike."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta

import pytest

from agent_reports.anomalies import prompts as anomalies_prompts
from agent_reports.anomalies.assets import build_anomalies_report
from agent_reports.anomalies.partitions import ANOMALIES
from agent_reports.briefing import prompts as briefing_prompts
from agent_reports.briefing.assets import build_briefing
from agent_reports.churn.analysis import churn_trend
from agent_reports.churn.assets import spike_findings
from agent_reports.compliance.analysis import (
    NOT_SCHEDULED,
    Materialization,
    ScheduleHistory,
    Window,
    coverage,
    problem_windows,
    window_ranges,
)
from agent_reports.compliance.assets import next_key
from agent_reports.core.analyst import AnalystRequest, OfflineAnalyst
from agent_reports.core.charts import price_chart
from agent_reports.core.customers import demo_customers
from agent_reports.core.reports import Note, Report, Table, format_value
from agent_reports.market import prompts as market_prompts
from agent_reports.market.assets import build_market_report, notable_findings


def _report(**fields) -> Report:
    base = {
        "analysis": "market",
        "partition": "2024-03-05",
        "window_start": "2024-03-05T00:00:00+00:00",
        "window_end": "2024-03-06T00:00:00+00:00",
        "generated_by": "offline",
        "input_fingerprint": "0" * 64,
        "prompt_version": "v1",
        "summary": "s",
        "findings": [],
        "metrics": {},
    }
    return Report(**(base | fields))


def _answer(analysis: str, prompts, data: dict):
    return OfflineAnalyst().answer(AnalystRequest.from_prompts(analysis, prompts, data))


def test_number_formats() -> None:
    assert format_value("price", 5.49) == "5.49" and format_value("price", 1234.5) == "1,234.50"
    assert format_value("pct", 0.0123) == "+1.23 %" and format_value("pct", -0.0287) == "−2.87 %"
    assert format_value("rate", 0.042) == "4.20 %" and format_value("ratio", 0.3) == "0.30×"
    assert format_value("score", -4.25) == "−4.2" and format_value("int", 12345) == "12,345"
    assert [format_value("num", v) for v in (None, True, False, 0.25, 1234.5678)] == [
        "–",
        "yes",
        "no",
        "0.25",
        "1,234.57",
    ]


def _ticker(close: float, move: float, vol: float = 0.3, volume: float = 1.0) -> dict:
    return {
        "close": close,
        "adj_close": None,
        "return_1d": move,
        "volatility_20d": vol,
        "volume_ratio_20d": volume,
        "price_basis": "close",
        "split": None,
    }


def test_market_report_formats_and_findings() -> None:
    """Prices with 2 decimals, returns as signed percentages, no ticker named twice, and an
    ordinary day (a 0.3× move on average volume) is not a finding."""
    tickers = {
        "BRVO": _ticker(5.49, -0.0287, vol=0.2),  # 2.3× its typical daily move
        "ECHO": _ticker(101.0, 0.0040, vol=0.3),  # 0.2× its typical daily move
    }
    days = [(f"2024-03-0{d}", 5.0 + d / 10) for d in range(1, 6)]
    metrics = {
        "date": "2024-03-05",
        "trading_day": True,
        "tickers": tickers,
        "top_movers": [
            {"ticker": "BRVO", "return_1d": -0.0287},
            {"ticker": "ECHO", "return_1d": 0.0040},
        ],
        "recent_prices": {"BRVO": days, "ECHO": days},
    }
    answer = _answer("market", market_prompts, market_prompts.prompt_data(metrics))
    report = build_market_report("2024-03-05", metrics, answer)
    markdown, html = report.to_markdown(), report.to_html()
    assert [f["subjects"] for f in report.findings] == [["BRVO"]]
    assert "**BRVO −2.87 %**:" in markdown and "(BRVO)" not in markdown
    assert "| BRVO | 5.49 | −2.87 % | 20.00 % | 1.00× |" in markdown
    assert not re.search(r"\d\.\d{4}", markdown)  # no 5.4900
    assert not re.search(r"\d%", markdown)  # "+1.23 %", never a fraction or "1.23%"
    assert html.count("<svg") == 2 and "### BRVO −2.87 %" in markdown
    assert "http" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_notable_findings_keep_findings_without_tickers() -> None:
    tickers = {"ECHO": _ticker(10.0, 0.001), "HTEL": _ticker(10.0, 0.001, volume=2.0)}
    findings = [
        {"title": "ECHO flat", "detail": "", "subjects": ["ECHO"]},
        {"title": "HTEL on volume", "detail": "", "subjects": ["HTEL"]},
        {"title": "A quiet day", "detail": "", "subjects": []},
    ]
    kept = notable_findings(findings, tickers)
    assert [f["title"] for f in kept] == ["HTEL on volume", "A quiet day"]


def test_one_callout_per_severity_most_severe_first() -> None:
    notes = [Note("a"), Note("b", "warning"), Note("c"), Note("d", "error"), Note("e", "warning")]
    report = _report(notes=notes)
    html, markdown = report.to_html(), report.to_markdown()
    assert re.findall(r'class="callout (\w+)"', html) == ["error", "warning", "info"]
    assert markdown.index("> **Alert**") < markdown.index("> **Warning**")
    assert markdown.index("> - d") < markdown.index("> - b") < markdown.index("> - e")
    assert markdown.index("## Summary") < markdown.index("> **Alert**")  # summary first
    # The JSON keeps the notes as text and their levels beside them; reading it back (as
    # the briefing e-mail does) keeps the call-outs.
    record = json.loads(report.to_json())
    assert record["notes"] == ["a", "b", "c", "d", "e"]
    assert Report(**record).to_html() == html
    with pytest.raises(ValueError, match="note level"):
        Note("x", "fatal")


def _verdict(severity: str, anomalies: list) -> dict:
    features = {
        "requests": 900,
        "status_counts": {"200": 900},
        "malformed_lines": 0,
        "malformed_samples": [],
        "top_clients": [],
        "top_paths": [],
        "top_user_agents": [],
        "coverage": {
            "lines_read": 900,
            "lines_parsed": 900,
            "lines_skipped": 0,
            "lines_untimed": 0,
            "files": [],
            "format_changes": [],
        },
    }
    bands = {
        "requests": {
            "observed": 900,
            "baseline": [800.0, 850.0, 820.0, 880.0],
            "median": 835.0,
            "expected_low": 500.0,
            "expected_high": 1200.0,
        }
    }
    return {
        "severity": severity,
        "anomalies": anomalies,
        "baseline_hours": 7,
        "baseline_sufficient": True,
        "bands": bands,
        "features": features,
    }


def test_a_quiet_hour_gives_no_alarming_callout_and_says_none() -> None:
    verdict = _verdict("none", [])
    data = anomalies_prompts.prompt_data(verdict, verdict["features"], "2024-03-02-15:00")
    answer = _answer("anomalies", anomalies_prompts, data)
    report = build_anomalies_report("2024-03-02-15:00", verdict, answer)
    html, markdown = report.to_html(), report.to_markdown()
    assert re.findall(r'class="callout (\w+)"', html) == ["info"]
    assert "Probable cause" not in markdown  # no triage text for an hour with nothing to triage
    assert "## Anomalies\n\nNone." in markdown and "## Top clients\n\nNone." in markdown
    assert html.count("<svg") == 1 and "| requests | 900 | 500 – 1,200 | 4 |" in markdown


def test_a_severe_hour_is_an_alert() -> None:
    anomaly = {
        "metric": "rate_5xx",
        "observed": 0.269,
        "expected_low": 0.0,
        "expected_high": 0.0443,
        "baseline_median": 0.0043,
        "score": 26.5,
        "severity": "high",
        "evidence": {"top_5xx_paths": [{"name": "/", "errors_5xx": 44}]},
    }
    verdict = _verdict("high", [anomaly])
    data = anomalies_prompts.prompt_data(verdict, verdict["features"], "2024-03-02-15:00")
    report = build_anomalies_report(
        "2024-03-02-15:00", verdict, _answer("anomalies", anomalies_prompts, data)
    )
    markdown = report.to_markdown()
    assert re.findall(r'class="callout (\w+)"', report.to_html()) == ["error", "info"]
    assert "| rate\\_5xx | 26.90 % | 0.00 % – 4.43 % | +26.5 | high |" in markdown
    assert "Observed 26.90 %, expected 0.00 % – 4.43 %" in markdown


def test_empty_tables_say_none() -> None:
    report = _report(tables=[Table("Deliveries", ["when", "to"], [])])
    assert "## Deliveries\n\nNone." in report.to_markdown()
    assert '<h2>Deliveries</h2>\n<p class="none">None.</p>' in report.to_html()


def test_windows_are_labelled_with_their_zone() -> None:
    utc = _report()
    assert "_Window 2024-03-05 00:00 → 2024-03-06 00:00 UTC._" in utc.to_markdown()
    new_york = _report(
        analysis="briefing",
        window_start="2024-03-05T00:00:00-05:00",
        window_end="2024-03-06T00:00:00-05:00",
        timezone="America/New_York",
    )
    assert "2024-03-05 00:00 → 2024-03-06 00:00 New York time (UTC−05:00)" in new_york.to_html()
    assert "(UTC)" not in new_york.to_markdown()


def _briefing(hours_found: int) -> Report:
    inputs = {
        "as_of": "2024-03-05T09:00:00-05:00",
        "market": {
            "partition": "2024-03-04",
            "window_end": "2024-03-05T00:00:00+00:00",
            "summary": "Markets rose.",
            "degraded": False,
            "input_fingerprint": "f" * 64,
            "trading_day": True,
            "top_movers": [{"ticker": "BRVO", "return_1d": -0.0287}],
        },
        "anomalies": {
            "hours_expected": 24,
            "hours_found": hours_found,
            "first_hour": None,
            "last_hour": None,
            "by_severity": {"none": hours_found},
            "degraded_hours": 0,
            "worst_hours": [],
        },
        "churn": None,
    }
    from agent_reports.briefing.analysis import missing_sources

    missing = missing_sources(inputs)
    answer = _answer("briefing", briefing_prompts, briefing_prompts.prompt_data(inputs, missing))
    return build_briefing("2024-03-05", inputs, answer)


@pytest.mark.parametrize(
    ("hours", "title"),
    [(0, "No anomaly reports"), (20, "No traffic anomalies in the 20 hours reported")],
)
def test_briefing_wording(hours: int, title: str) -> None:
    report = _briefing(hours)
    markdown = report.to_markdown()
    assert report.findings[0]["title"] == title
    assert "09:00 New York time (2024-03-05 14:00 UTC)" in markdown
    assert "New York time (UTC−05:00)" in markdown
    assert not re.search(r"\b(False|True|None)\b", markdown.replace("None.", ""))
    assert "| market | 2024-03-04 | 2024-03-05 00:00 | no |" in markdown


def _hour(key: str) -> Window:
    start = datetime.strptime(key, "%Y-%m-%d-%H:%M").replace(tzinfo=UTC)
    return Window("anomalies", key, start, start + timedelta(hours=1), ANOMALIES.deadline)


def test_compliance_groups_ranges_and_separates_not_scheduled() -> None:
    """99 missing hours are one range; hours due (end + 2 h) before the analysis first ran
    are not scheduled, and so are those after its schedule stopped; an ok hour splits a
    range."""
    start = datetime(2024, 3, 1, tzinfo=UTC)
    keys = [(start + timedelta(hours=h)).strftime("%Y-%m-%d-%H:%M") for h in range(24 * 8)]
    windows = [_hour(k) for k in keys]
    first_run = (start + timedelta(days=2)).timestamp()
    ok = windows[24 * 6]  # one hour with its report, on time
    mats = [Materialization("anomalies", ok.key, ok.end.timestamp() + 60, "r1")]
    stopped = (start + timedelta(days=7)).timestamp()
    history = {"anomalies": ScheduleHistory(first_run, stopped_after=stopped)}
    result = coverage(windows, mats, [], start + timedelta(days=10), history)
    counts = result["per_analysis"]["anomalies"]
    assert (counts["ok"], counts["missing"], counts[NOT_SCHEDULED]) == (1, 122, 45 + 24)
    ranges = window_ranges(problem_windows(result["windows"]), next_key)
    summary = [(r["first"], r["last"], r["windows"], r["status"]) for r in ranges]
    assert summary == [
        ("2024-03-01-00:00", "2024-03-02-20:00", 45, NOT_SCHEDULED),
        ("2024-03-02-21:00", "2024-03-06-23:00", 99, "missing"),
        ("2024-03-07-01:00", "2024-03-07-23:00", 23, "missing"),
        ("2024-03-08-00:00", "2024-03-08-23:00", 24, NOT_SCHEDULED),
    ]
    assert ranges[0]["reason"].startswith("before the analysis' first run (2024-03-03 00:00 UTC")
    assert ranges[-1]["reason"] == "schedule stopped (last tick 2024-03-08 00:00 UTC)"
    # Without any history of the analysis, nothing was due: every window is not scheduled.
    never = coverage(
        windows, [], [], start + timedelta(days=10), {"anomalies": ScheduleHistory(None)}
    )
    assert never["per_analysis"]["anomalies"][NOT_SCHEDULED] == len(windows)


def test_the_demo_customers_hold_a_recent_churn_spike() -> None:
    """Every week's trend holds a churn wave within its last four weeks, twice the median
    or more, and the report turns it into a finding and a chart."""
    customers = demo_customers(7)
    for monday in (date(2024, 3, 11), date(2026, 11, 30), date(2027, 6, 7)):
        trend = churn_trend(customers, monday + timedelta(days=7))
        assert trend["spikes"], monday
        [finding] = spike_findings(trend, monday.isoformat())
        assert finding["title"].startswith("Churn spike")
        spike = max(w["churned"] for w in trend["weeks"][-4:])
        assert spike >= 2 * trend["median"] and spike >= trend["median"] + 5


def test_charts_escape_their_labels() -> None:
    chart = price_chart("<b>X</b>", [("2024-03-01", 1.0), ("2024-03-02", 2.0)], 1.0)
    assert "<b>" not in chart.svg and "&lt;b&gt;" in chart.svg
    assert chart.table.cells()[-1] == ["2024-03-02", "2.00"]
