"""The market analysis as a user drives it in the Dagster UI, in headless Chromium (Debian's
/usr/bin/chromium, installed by deploy/install-test-browser.sh) against a real `dagster dev`:
the README's first report (Jobs → market_job → Materialize all… → one day → Launch; the
report file where the README says it lands), backfill three, toggle the schedule, read a
report's Markdown preview, and the lineage the briefing declares. Each step leaves a
screenshot under the test's tmp dir; on failure the path of the last one is printed and
attached to the test report."""

from __future__ import annotations

import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_reports.core.files import current_umask
from agent_reports_tests.dagster_stack import DagsterStack, dagster_stack

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ONE = "2024-03-05"
RANGE = ["2024-03-11", "2024-03-12", "2024-03-13"]
SCHEDULE = "market_job_schedule"
SCHEDULE_STATE = """query($s: ScheduleSelector!) { scheduleOrError(scheduleSelector: $s) {
  __typename ... on Schedule { scheduleState { status } } } }"""
BACKFILLS = """{ partitionBackfillsOrError(limit: 10) { __typename
  ... on PartitionBackfills { results { id status } } } }"""


@pytest.fixture
def stack(isolated_dirs: Path) -> Iterator[DagsterStack]:
    with dagster_stack(
        isolated_dirs / "dagster_home", "dagster.yaml", "agent_reports.definitions"
    ) as s:
        s.set_nux_seen()
        yield s


class Screens:
    """Numbered screenshots of each step; remembers the last one."""

    def __init__(self, page, folder: Path):
        self.page, self.folder, self.count, self.last = page, folder, 0, None
        folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, step: str) -> Path:
        self.count += 1
        self.last = self.folder / f"{self.count:02d}-{step}.png"
        self.page.screenshot(path=str(self.last), full_page=True)
        return self.last


def schedule_status(stack: DagsterStack) -> str:
    selector = {
        "repositoryLocationName": stack.location,
        "repositoryName": stack.repository,
        "scheduleName": SCHEDULE,
    }
    result = stack.graphql(SCHEDULE_STATE, {"s": selector})["scheduleOrError"]
    assert result["__typename"] == "Schedule", result
    return result["scheduleState"]["status"]


def launch_from_job_page(
    page, stack: DagsterStack, selection: str, count: int, screens: Screens
) -> None:
    """Job page → "Materialize all…" → all partitions shown → type the selection (a key or
    `[start...end]`) → the dialog counts `count` partitions → the launch button."""
    from playwright.sync_api import expect

    page.goto(f"{stack.url}/locations/{stack.location}/jobs/market_job")
    page.get_by_role("button", name=re.compile("Materialize all")).click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Partition selection").wait_for()
    dialog.get_by_text("Show all partitions").click()
    field = dialog.locator("input[type=text]").first
    field.fill(selection)
    field.press("Enter")
    label = f"{count} partition" + ("s" if count != 1 else "")
    expect(dialog.get_by_text(label, exact=True)).to_be_visible()
    screens(f"selected-{count}")
    dialog.get_by_role("button", name=re.compile(r"^Launch")).click()
    dialog.wait_for(state="hidden")


def test_market_in_the_browser(
    stack: DagsterStack, tmp_path: Path, isolated_dirs: Path, request: pytest.FixtureRequest
) -> None:
    assert CHROMIUM.exists(), "run deploy/install-test-browser.sh (make test does)"
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(30_000)
        expect.set_options(timeout=30_000)  # a loaded 2-core machine renders slowly
        screens = Screens(page, tmp_path / "screenshots")
        try:
            # The market report's asset page, without the community pop-up.
            page.goto(f"{stack.url}/assets/market_report")
            expect(page.get_by_text("Never materialized")).to_be_visible()
            expect(page.get_by_text("Join the Dagster community")).to_have_count(0)
            screens("asset-page")

            # The README's first report: one partition launched from the job page turns
            # materialised, and its files land in reports/market/, readable by others.
            launch_from_job_page(page, stack, ONE, 1, screens)
            stack.wait_until(lambda: ONE in stack.materializations("market_report"), 240)
            for suffix in ("html", "md", "json"):
                report = isolated_dirs / "reports" / "market" / f"{ONE}.{suffix}"
                assert stat.S_IMODE(report.stat().st_mode) == 0o666 & ~current_umask(), report
            page.goto(f"{stack.url}/assets/market_report?view=partitions&partition={ONE}")
            expect(page.get_by_text("Materialized (1)")).to_be_visible()
            expect(page.get_by_text("preview", exact=True)).to_be_visible()  # its metadata
            screens("one-partition-materialized")

            # Its Markdown preview reads as the report.
            page.get_by_text(re.compile("Show Markdown")).first.click()
            preview = page.get_by_role("dialog")
            expect(preview.get_by_text(f"Market report — {ONE}")).to_be_visible()
            expect(preview.get_by_text("Summary")).to_be_visible()
            screens("markdown-preview")
            page.keyboard.press("Escape")

            # A backfill of three partitions, launched from the UI, completes.
            launch_from_job_page(page, stack, f"[{RANGE[0]}...{RANGE[-1]}]", len(RANGE), screens)
            backfills = stack.graphql(BACKFILLS)["partitionBackfillsOrError"]["results"]
            assert len(backfills) >= 1
            backfill_id = backfills[0]["id"]
            runs = stack.wait_for_backfill(backfill_id, timeout=240)
            assert runs and all(r.status == "SUCCESS" for r in runs)
            assert set(RANGE) <= set(stack.materializations("market_report"))
            page.goto(f"{stack.url}/runs/b/{backfill_id}")
            expect(page.get_by_text("Completed").first).to_be_visible()
            screens("backfill-completed")

            # The briefing's lineage: the three reports it reads are upstream in its graph.
            page.goto(f"{stack.url}/assets/briefing_report?view=lineage")
            for source in ("market_report", "anomalies_report", "churn_report"):
                expect(page.get_by_text(source, exact=True).first).to_be_visible()
            screens("briefing-lineage")

            # The schedule, toggled on and off in the UI, reads back through GraphQL.
            assert schedule_status(stack) == "STOPPED"
            page.goto(f"{stack.url}/locations/{stack.location}/schedules/{SCHEDULE}")
            # The switch is a styled label around a hidden checkbox: click what a user sees.
            switch = page.locator("label").filter(has=page.locator("input[type=checkbox]")).first
            screens("schedule-page")
            checkbox = switch.locator("input[type=checkbox]")
            switch.click()
            stack.wait_until(lambda: schedule_status(stack) == "RUNNING", 60)
            # The page shows the new state (and takes clicks again) before the second click:
            # once on, the catch-up sensor launches missed days and the UI answers slowly.
            expect(checkbox).to_be_checked(timeout=60_000)
            expect(checkbox).to_be_enabled(timeout=60_000)
            screens("schedule-on")
            switch.click()
            stack.wait_until(lambda: schedule_status(stack) == "STOPPED", 60)
            screens("schedule-off")
        except BaseException:
            if screens.last is not None:
                print(f"last screenshot: {screens.last}")
                request.node.add_report_section("call", "last screenshot", str(screens.last))
            raise
        finally:
            browser.close()
