"""Each analysis' HTML report as a reader sees it, in headless Chromium: built from demo data
by the same functions the report assets call (offline analyst, no Dagster run), opened
from disk with every network request refused, and kept as a PNG per report under
`artifacts/screenshots/` (ignored by git, kept by CI). The pages must be self-contained
(no request leaves the file), show their charts as inline SVG, style call-outs by severity
and stay short: a fresh instance's audit is one readable page."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from agent_reports.anomalies import prompts as anomalies_prompts
from agent_reports.anomalies.analysis import HourlyTraffic, detect, partition_traffic
from agent_reports.anomalies.assets import build_anomalies_report
from agent_reports.briefing import prompts as briefing_prompts
from agent_reports.briefing.analysis import briefing_inputs, missing_sources
from agent_reports.briefing.assets import build_briefing
from agent_reports.briefing.partitions import as_of
from agent_reports.churn import prompts as churn_prompts
from agent_reports.churn.analysis import churn_metrics
from agent_reports.churn.assets import build_churn_report
from agent_reports.compliance import prompts as compliance_prompts
from agent_reports.compliance.analysis import (
    Materialization,
    ScheduleHistory,
    coverage,
    llm_quality_and_cost,
    log_coverage,
    problem_windows,
)
from agent_reports.compliance.assets import build_compliance_report, expected_windows
from agent_reports.compliance.partitions import compliance_partitions
from agent_reports.core.access_logs_demo import demo_incidents
from agent_reports.core.analyst import AnalystRequest, OfflineAnalyst
from agent_reports.core.customers import demo_customers
from agent_reports.core.reports import Report
from agent_reports.core.sources import DemoSource
from agent_reports.market import prompts as market_prompts
from agent_reports.market.analysis import history_window, market_metrics
from agent_reports.market.assets import build_market_report
from agent_reports_tests.test_ui_market import CHROMIUM, FLAGS

SCREENSHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
MARKET_DAY = date(2024, 3, 18)
CHURN_WEEK = (date(2024, 3, 11), date(2024, 3, 18))  # a demo churn wave week
BRIEFING_DAY = "2024-03-19"
MONTH = "2024-03-01"
MAX_PAGE_HEIGHT = 5000  # pixels at 1200 px wide: a page, not a scroll of 775 rows


def _answer(analysis: str, prompts, data: dict):
    return OfflineAnalyst().answer(AnalystRequest.from_prompts(analysis, prompts, data))


def market_report() -> Report:
    metrics = market_metrics(DemoSource().market_prices(*history_window(MARKET_DAY)), MARKET_DAY)
    answer = _answer("market", market_prompts, market_prompts.prompt_data(metrics))
    return build_market_report(MARKET_DAY.isoformat(), metrics, answer)


def anomaly_hour() -> int:
    """The demo's first error burst in the 24 hours the briefing reads."""
    start = datetime(2024, 3, 18, 13, tzinfo=UTC)
    found = demo_incidents(7, start, start + timedelta(hours=24))
    return min(hour for hour, kind in found.items() if kind == "error_burst")


def anomalies_report(hour: int) -> Report:
    """The hour and the same hour on the 7 days before (the baseline), from the demo logs."""
    traffic = HourlyTraffic()
    for day in range(8):
        start = datetime.fromtimestamp((hour - 24 * day) * 3600, UTC)
        traffic.add_all(DemoSource().access_logs(start, start + timedelta(hours=1)))
    window = partition_traffic(traffic, hour)
    verdict = {**detect(window["features"], window["baseline"]), "features": window["features"]}
    key = datetime.fromtimestamp(hour * 3600, UTC).strftime("%Y-%m-%d-%H:%M")
    data = anomalies_prompts.prompt_data(verdict, verdict["features"], key)
    return build_anomalies_report(key, verdict, _answer("anomalies", anomalies_prompts, data))


def churn_report() -> Report:
    customers = demo_customers(7)
    recent = customers[customers["signup_date"] >= "2021-01-01"]  # a quicker model fit
    metrics = churn_metrics(recent, *CHURN_WEEK)
    answer = _answer("churn", churn_prompts, churn_prompts.prompt_data(metrics))
    return build_churn_report(CHURN_WEEK[0].isoformat(), metrics, answer)


def compliance_report() -> Report:
    """March on an instance installed on 18 March: the market ran daily from then on but
    missed two days; nothing else ever ran."""
    month = compliance_partitions.time_window_for_partition_key(MONTH)
    windows = expected_windows(month)
    installed = datetime(2024, 3, 18, 12, tzinfo=UTC).timestamp()
    mats = [
        Materialization("market", w.key, w.end.timestamp() + 6 * 3600, f"run{w.key}")
        for w in windows
        if w.analysis == "market"
        and w.end.timestamp() > installed
        and w.key not in ("2024-03-22", "2024-03-23")
    ]
    history = {
        a: ScheduleHistory(installed if a == "market" else None)
        for a in ("market", "anomalies", "churn", "briefing")
    }
    result = coverage(windows, mats, [], month.end, history)
    audit = {
        "month": MONTH[:7],
        "coverage": result["per_analysis"],
        "problem_windows": problem_windows(result["windows"]),
        "deliveries": [],
        "delivery_counts": {},
        "llm": llm_quality_and_cost(mats, 0.5),
        "log_lines": 0,
        "log_files": 0,
        "unreadable": [],
        "log_scan": log_coverage(0, {}, []),
        "policy_findings": [],
    }
    answer = _answer("compliance", compliance_prompts, compliance_prompts.prompt_data(audit))
    return build_compliance_report(MONTH, audit, answer)


def briefing_report(root: Path) -> Report:
    inputs = briefing_inputs(root, as_of(BRIEFING_DAY))
    data = briefing_prompts.prompt_data(inputs, missing_sources(inputs))
    return build_briefing(BRIEFING_DAY, inputs, _answer("briefing", briefing_prompts, data))


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reports")
    built = [market_report(), anomalies_report(anomaly_hour()), churn_report()]
    built += [compliance_report()]
    paths = {report.analysis: report.write(root)["html"] for report in built}
    briefing = briefing_report(root)
    paths["briefing"] = briefing.write(root)["html"]
    return paths


def test_each_report_reads_well_in_the_browser(reports: dict[str, Path]) -> None:
    assert CHROMIUM.exists(), "run deploy/install-test-browser.sh (make test does)"
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    refused: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})

        def route(request_route) -> None:
            url = request_route.request.url
            if url.startswith("file://") or url.startswith("data:"):
                request_route.continue_()
            else:
                refused.append(url)
                request_route.abort()

        page.route("**/*", route)
        heights = {}
        for analysis, path in reports.items():
            page.goto(path.as_uri())
            page.screenshot(path=str(SCREENSHOTS / f"{analysis}.png"), full_page=True)
            heights[analysis] = page.evaluate("document.documentElement.scrollHeight")
            charts = page.locator("figure svg").count()
            expected = {"market": 3, "anomalies": 1, "churn": 1, "compliance": 1, "briefing": 0}
            assert charts == expected[analysis], (analysis, charts)
            levels = page.locator(".callout").evaluate_all("els => els.map(e => e.className)")
            assert len(levels) == len(set(levels)), (analysis, levels)  # one per severity
        browser.close()
    assert refused == []
    print({analysis: f"{height} px" for analysis, height in heights.items()})
    assert max(heights.values()) < MAX_PAGE_HEIGHT, heights
