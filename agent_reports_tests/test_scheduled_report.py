"""The YAML-declared sign-ups analysis (agent_reports/defs/signups/) against real parts: its
report through the openai analyst at llmock, its SQL checks as asset checks, the real dg CLI
on a malformed defs.yaml, and the promises it shares with the built-in analyses (pool, run
lock, catch-up sensor, audit coverage)."""

import importlib
import json
import os
import shutil
import sqlite3
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from dagster import (
    AssetSpec,
    DagsterInstance,
    DefaultScheduleStatus,
    TimeWindow,
    build_schedule_from_partitioned_job,
    build_sensor_context,
    load_defs,
)

from agent_reports.compliance.assets import expected_windows
from agent_reports.core.declaration import declared_reports
from agent_reports.core.resources import AnalystResource
from agent_reports.definitions import defs
from agent_reports.ops import ClockResource
from agent_reports.ops.catchup import CatchUp, build_catchup_sensor
from agent_reports.ops.pings import ping_urls
from agent_reports_tests.conftest import BIN, LLMServer

ROOT = Path(__file__).resolve().parents[1]
DAY = "2024-03-05"
REPLY = {
    "summary": "42 people signed up, most of them through the organic channel.",
    "findings": [
        {
            "title": "Organic led",
            "detail": "The organic channel brought 23 of the 42 sign-ups.",
            "subjects": ["organic"],
            "metric": "by_channel",
        }
    ],
}


@pytest.fixture(autouse=True)
def data_dir(isolated_dirs: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The demo SQLite file is created here, from the example's demo.sql, on first use."""
    folder = isolated_dirs / "data"
    monkeypatch.setenv("AGENT_REPORTS_DATA_DIR", str(folder))
    return folder


def _report_files(root: Path, key: str = DAY, name: str = "signups") -> dict[str, bytes]:
    return {ext: (root / name / f"{key}.{ext}").read_bytes() for ext in ("json", "md", "html")}


def _signups_table(path: Path, rows: list[tuple]) -> str:
    """An SQLite sign-ups table of our own; its URL for AGENT_REPORTS_SIGNUPS_URL."""
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE signups (id INTEGER PRIMARY KEY, created_at TEXT, channel TEXT,"
            " country TEXT, plan TEXT)"
        )
        db.executemany("INSERT INTO signups VALUES (?, ?, ?, ?, ?)", rows)
    return f"sqlite:///{path}"


def _check_results(result) -> dict[str, bool]:
    return {
        e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data.passed
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }


def test_same_window_twice_same_bytes_and_one_llm_request(
    llm_server: LLMServer, monkeypatch, run_partition, isolated_dirs
):
    llm_server.use(monkeypatch)
    llm_server.reply_json(REPLY)
    first = run_partition("signups_job", DAY)
    files = _report_files(isolated_dirs / "reports")
    run_partition("signups_job", DAY)
    assert _report_files(isolated_dirs / "reports") == files
    assert len(llm_server.chat_requests()) == 1

    record = json.loads(files["json"])
    assert record["summary"] == REPLY["summary"]
    assert record["findings"][0]["metric"] == "by_channel"
    assert record["degraded"] is False
    assert record["prompt_version"].startswith("signups-v1+")
    totals = record["metrics"]["totals"][0]
    assert record["metrics"]["coverage"]["rows_read"] == totals["signups"] > 0
    assert sum(r["signups"] for r in record["metrics"]["by_channel"]) == totals["signups"]
    # The window came from the partition, as bound parameters: the model saw that day only.
    sent = llm_server.chat_requests()[0]["body"]["messages"][-1]["content"]
    assert '"start":"2024-03-05T00:00:00+00:00"' in sent
    assert all(_check_results(first).values()) and len(_check_results(first)) == 4
    # The run held the analysis' run lock, taken for its pool (core/run_lock.py).
    assert "signups" in first.dagster_run.tags.get("agent_reports/run_lock", "") or any(
        "run lock signups" in (e.message or "") for e in first.all_events
    )


def test_a_window_without_rows_is_flagged_not_reported_as_quiet(
    llm_server: LLMServer, monkeypatch, run_partition, isolated_dirs
):
    llm_server.use(monkeypatch)
    url = _signups_table(isolated_dirs / "empty.sqlite", [])
    monkeypatch.setenv("AGENT_REPORTS_SIGNUPS_URL", url)
    result = run_partition("signups_job", DAY)
    record = json.loads(_report_files(isolated_dirs / "reports")["json"])
    assert record["metrics"]["coverage"]["rows_read"] == 0
    assert record["degraded"] is True
    assert record["summary"].startswith("No data for 2024-03-05")
    assert any("not evidence that nothing happened" in note for note in record["notes"])
    assert llm_server.chat_requests() == []  # nothing to ask about
    assert _check_results(result)["report_is_grounded"] is False


def test_a_failing_check_sql_fails_its_asset_check_and_blocks_the_report(
    monkeypatch, run_partition, isolated_dirs
):
    rows = [
        (1, "2024-03-05 10:00:00", "organic", "US", "free"),
        (2, "2024-03-05 11:00:00", "social", "DE", "gold"),  # not a plan: known_plans fails
    ]
    monkeypatch.setenv("AGENT_REPORTS_SIGNUPS_URL", _signups_table(isolated_dirs / "s.db", rows))
    result = run_partition("signups_job", DAY, raise_on_error=False)
    checks = _check_results(result)
    assert checks["known_plans"] is False
    assert checks["rows_inside_window"] is True and checks["unique_ids"] is True
    failed = next(
        e
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
        and e.asset_check_evaluation_data.check_name == "known_plans"
    )
    assert failed.asset_check_evaluation_data.metadata["bad_rows"].value == 1
    assert not (isolated_dirs / "reports" / "signups" / f"{DAY}.json").exists()


def _project_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "project"
    copy.mkdir()
    shutil.copy(ROOT / "pyproject.toml", copy)
    shutil.copytree(
        ROOT / "agent_reports", copy / "agent_reports", ignore=shutil.ignore_patterns("__pycache__")
    )
    return copy


def _dg(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(project), "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run(
        [str(BIN / "dg"), *args], cwd=project, env=env, capture_output=True, text=True, timeout=300
    )


def test_dg_check_names_the_file_line_and_field_of_a_malformed_defs_yaml(tmp_path: Path):
    project = _project_copy(tmp_path)
    defs_yaml = project / "agent_reports" / "defs" / "signups" / "defs.yaml"
    text = defs_yaml.read_text()
    text = text.replace("    max: 4\n", "    max: four\n")  # wrong type, nested
    text = text.replace("  pool: signups\n", "  pool: signups\n  poool: signups\n")  # unknown
    defs_yaml.write_text(text)
    lines = text.splitlines()
    max_line = lines.index("    max: four") + 1
    unknown_line = lines.index("  poool: signups") + 1

    checked = _dg(project, "check", "yaml")
    output = checked.stdout + checked.stderr
    assert checked.returncode != 0, output
    assert f"{defs_yaml}:{max_line}" in output and "attributes.findings.max" in output
    assert "'four' is not of type 'integer'" in output
    assert f"{defs_yaml}:{unknown_line}" in output and "attributes.poool" in output


def test_a_broken_rule_names_the_file_line_and_field_when_the_defs_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """What `dg check defs` (and `make run`) print, in-process: a temporary defs folder of
    its own package, loaded by the same loader definitions.py uses."""
    package = tmp_path / "declared_elsewhere"
    shutil.copytree(ROOT / "agent_reports" / "defs", package)
    defs_yaml = package / "signups" / "defs.yaml"
    text = defs_yaml.read_text().replace("  deadline: 26h", "  deadline: soon")
    defs_yaml.write_text(text)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "deadline: soon" in row)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(Exception) as raised:
        load_defs(importlib.import_module("declared_elsewhere"), project_root=tmp_path)
    chain, error = [], raised.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__
    message = "\n".join(chain)
    assert f"attributes.deadline at {defs_yaml}:{line}" in message
    assert "a duration looks like 30m, 2h or 1d6h, not 'soon'" in message


def test_dg_list_defs_shows_the_declared_analysis_beside_the_built_in_ones():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1", "COLUMNS": "250"}
    listed = subprocess.run(
        [str(BIN / "dg"), "list", "defs", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert listed.returncode == 0, listed.stderr
    found = json.loads(listed.stdout)
    assets = {a["asset_key"]: a for a in found["assets"]}
    assert {"signups_input", "signups_report", "market_report", "briefing_report"} <= set(assets)
    assert assets["signups_report"]["group_name"] == "signups"
    assert assets["signups_report"]["owners"] == [{"team": "growth"}]
    assert "signups_input:known_plans" in {c["key"] for c in found["asset_checks"]}
    assert {"signups_job_schedule", "market_job_schedule"} <= {
        s["name"] for s in found["schedules"]
    }
    assert "signups_catchup_sensor" in {s["name"] for s in found["sensors"]}


def test_the_declared_analysis_sits_in_its_pool_under_the_run_lock():
    """The wiring: each asset in the analysis' pool, each run under its lock. On the real
    daemon, test_run_queue launches two sign-ups runs of one window and sees them apart."""
    job = defs.resolve_job_def("signups_job")
    pools = {node.definition.pool for node in job.graph.node_dict.values() if node.definition.pool}
    assert pools == {"signups"}
    assert "run_lock_signups" in job.resource_defs
    for key in ("signups_input", "signups_report"):
        assert defs.resolve_assets_def(key).op.pool == "signups"


def test_per_analysis_settings_accept_the_declared_name(monkeypatch):
    """Pings and AGENT_REPORTS_FAIL_ON_LLM_ERROR know the declared analysis like a built-in
    one (a misspelt name still fails)."""
    monkeypatch.setenv("AGENT_REPORTS_PING_URL_SIGNUPS", "http://127.0.0.1:9/ping/signups")
    assert ping_urls()["signups"] == "http://127.0.0.1:9/ping/signups"
    assert AnalystResource(fail_on_llm_error="signups,market").failing_analyses() == {
        "signups",
        "market",
    }
    with pytest.raises(ValueError, match="signup"):
        AnalystResource(fail_on_llm_error="signup").failing_analyses()


def test_missed_windows_are_caught_up_and_counted_in_the_audit(instance: DagsterInstance):
    job = defs.resolve_job_def("signups_job")
    assert job.execute_in_process(partition_key=DAY, instance=instance).success
    declared = next(
        d for d in declared_reports(defs.get_repository_def()) if d.analysis == "signups"
    )

    # The sensor as definitions.py builds it, with its schedule switched on (stored state
    # needs the daemon): 03-06 and 03-07 were missed, 03-05 ran; 03-08 is not due yet.
    sensor = defs.resolve_sensor_def("signups_catchup_sensor")
    schedule = defs.resolve_schedule_def("signups_job_schedule")
    running = build_schedule_from_partitioned_job(
        job, hour_of_day=2, minute_of_hour=0, default_status=DefaultScheduleStatus.RUNNING
    )
    assert running.cron_schedule == schedule.cron_schedule == "0 2 * * *"
    report = AssetSpec(declared.report_key, partitions_def=declared.partitions_def)
    spec = CatchUp("signups", job, report, running, timedelta(hours=2))  # lag: 2h
    now = datetime(2024, 3, 8, 3, 0, tzinfo=UTC)
    context = build_sensor_context(
        instance=instance,
        sensor_name=sensor.name,
        definitions=defs,
        resources={"clock": ClockResource(fixed_time=now.isoformat())},
    )
    requests = build_catchup_sensor(spec).evaluate_tick(context).run_requests
    assert [r.partition_key for r in requests] == ["2024-03-06", "2024-03-07"]
    # The shipped sensor itself leaves a stopped schedule (the default) alone.
    skipped = sensor.evaluate_tick(context)
    assert not skipped.run_requests and "stopped" in skipped.skip_message

    # The audit's coverage: March's due windows include the declared analysis' days.
    march = TimeWindow(datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 4, 1, tzinfo=UTC))
    windows = [w for w in expected_windows(march, [declared]) if w.analysis == "signups"]
    assert declared.audited and declared.deadline.after_end.total_seconds() == 26 * 3600
    assert len(windows) == 31


ORDERS_YAML = """\
type: agent_reports.ScheduledReport
attributes:
  name: orders
  partitions: {grain: daily, timezone: UTC, start: "2024-01-01"}
  deadline: 25h
  input:
    duckdb:
      tables:
        orders: {csv: shop/orders.csv}
        customers: {parquet: "shop/customers/*.parquet"}
      query: |
        SELECT o.order_id, o.ordered_at, o.amount, c.country
        FROM orders o JOIN customers c USING (customer_id)
        WHERE o.ordered_at >= $window_start AND o.ordered_at < $window_end
  metrics:
    - name: by_country
      sql: SELECT country, count(*) AS orders, sum(amount) AS revenue FROM input GROUP BY country
  prompt: {file: prompt.md, version: orders-v1}
  checks:
    - name: positive_amounts
      sql: SELECT * FROM input WHERE amount <= 0
"""


def test_duckdb_input_over_csv_and_parquet_files(tmp_path: Path, monkeypatch, data_dir: Path):
    """A DuckDB-declared analysis, loaded from a defs folder of its own: Parquet joined to
    CSV under the data dir, cut to the partition's window by bound parameters."""
    import pandas as pd
    from dagster import materialize

    from agent_reports.core.resources import (
        AnalystResource,
        PartitionRangeIOManager,
        ReportStoreResource,
    )

    shop = data_dir / "shop"
    (shop / "customers").mkdir(parents=True)
    (shop / "orders.csv").write_text(
        "order_id,customer_id,ordered_at,amount\n"
        "1,10,2024-03-04 23:59:59,5.0\n"  # the day before: outside the window
        "2,10,2024-03-05 00:00:00,7.5\n"
        "3,11,2024-03-05 12:30:00,2.5\n"
        "4,12,2024-03-05 23:00:00,4.0\n"
        "5,11,2024-03-06 00:00:00,9.0\n"  # the window's end is exclusive
    )
    customers = pd.DataFrame({"customer_id": [10, 11, 12], "country": ["DE", "US", "US"]})
    customers.to_parquet(shop / "customers" / "part-0.parquet")
    package = tmp_path / "declared_files"
    (package / "orders").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "orders" / "defs.yaml").write_text(ORDERS_YAML)
    (package / "orders" / "prompt.md").write_text("Describe the day's orders.\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    declared = load_defs(importlib.import_module("declared_files"), project_root=tmp_path)

    result = materialize(
        [*declared.assets, *declared.asset_checks],
        partition_key=DAY,
        resources={
            "analyst": AnalystResource(),
            "reports": ReportStoreResource(),
            "range_io_manager": PartitionRangeIOManager(),
        },
    )
    assert result.success
    record = json.loads(
        _report_files(Path(os.environ["AGENT_REPORTS_REPORTS_DIR"]), DAY, "orders")["json"]
    )
    assert record["analysis"] == "orders"
    assert record["metrics"]["coverage"]["rows_read"] == 3
    assert record["metrics"]["by_country"] == [
        {"country": "DE", "orders": 1, "revenue": 7.5},
        {"country": "US", "orders": 2, "revenue": 6.5},
    ]
    assert _check_results(result) == {"positive_amounts": True, "report_is_grounded": True}
