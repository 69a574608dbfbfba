"""Approval before sending (AGENT_REPORTS_APPROVAL_REQUIRED): the e-mail step records
"awaiting approval" and sends nothing; `approve_report_job` records who approved and when
and sends once per recipient; a second approval or a re-run sends nothing more; an
approval left waiting past the report's deadline raises one alert.

Real parts: the aiosmtpd SMTP server (messages read back from its Maildir), a PostgreSQL
delivery ledger for the churn week, in-process runs of the code location's own jobs, and
the registered sensor evaluated at fixed instants.
"""

import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from email import policy
from email.header import decode_header, make_header
from email.parser import BytesParser
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, build_sensor_context

from agent_reports.compliance.analysis import deliveries as audit_rows
from agent_reports.core.delivery import DeliveryLedger
from agent_reports.core.resources import DeliveryResource
from agent_reports.definitions import defs
from agent_reports.ops import ClockResource
from agent_reports.ops.alerts import approval_overdue_alert_sensor
from agent_reports_tests.test_briefing_report import DAY, _fixture_reports
from agent_reports_tests.test_churn_email import _ledger_url

WEEK = "2024-03-04"
CHURN_TO = ["cfo@example.com", "ops@example.com"]
BRIEFING_TO = ["cto@example.com", "ny-desk@example.com"]
ONCALL = "oncall@example.com"


@pytest.fixture
def mail(smtp_server, monkeypatch):
    """Reports and ops alerts to the real SMTP server, churn and briefing under approval."""
    monkeypatch.setenv("AGENT_REPORTS_SMTP_HOST", smtp_server.host)
    monkeypatch.setenv("AGENT_REPORTS_SMTP_PORT", str(smtp_server.port))
    monkeypatch.setenv("AGENT_REPORTS_SMTP_SECURITY", "none")
    monkeypatch.setenv("AGENT_REPORTS_CHURN_RECIPIENTS", ", ".join(CHURN_TO))
    monkeypatch.setenv("AGENT_REPORTS_BRIEFING_RECIPIENTS", ", ".join(BRIEFING_TO))
    monkeypatch.setenv("AGENT_REPORTS_OPS_EMAIL_TO", ONCALL)
    monkeypatch.setenv("AGENT_REPORTS_APPROVAL_REQUIRED", "churn, briefing")
    return smtp_server


@pytest.fixture
def instance():
    """An in-memory instance, as `run_partition` uses: runs here need no stored history."""
    return DagsterInstance.ephemeral()


def _run(instance, job: str, partition: str | None = None, **kwargs):
    return defs.resolve_job_def(job).execute_in_process(
        instance=instance, partition_key=partition, raise_on_error=False, **kwargs
    )


def _approve(instance, analysis: str, partition: str, approver: str, comment: str = ""):
    config = {"analysis": analysis, "partition": partition, "approver": approver}
    return _run(
        instance,
        "approve_report_job",
        run_config={"ops": {"approve_report": {"config": {**config, "comment": comment}}}},
    )


def _failure(result) -> str:
    [event] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return event.event_specific_data.user_failure_data.description


def _metadata(result, asset: str) -> dict:
    [event] = [
        e
        for e in result.get_asset_materialization_events()
        if e.asset_key.to_user_string() == asset
    ]
    return {k: v.value for k, v in event.event_specific_data.materialization.metadata.items()}


def _observation(result) -> dict:
    [event] = [e for e in result.all_events if e.event_type_value == "ASSET_OBSERVATION"]
    return {k: v.value for k, v in event.asset_observation_data.asset_observation.metadata.items()}


def _received(server, to: list[str]) -> list:
    parser = BytesParser(policy=policy.default)
    messages = [parser.parsebytes(m.as_bytes()) for m in server.messages()]
    return [m for m in messages if m["To"] in to]


def _ledger() -> DeliveryLedger:
    return DeliveryLedger(os.environ.get("AGENT_REPORTS_LEDGER_URL"))


def _rows(report: str) -> tuple[list[dict], list[dict]]:
    """(approval rows, delivery rows) of one report."""
    ledger = _ledger()
    try:
        approvals = [r for r in ledger.approval_rows() if r["report"] == report]
        return approvals, ledger.entries(report)
    finally:
        ledger.engine.dispose()


def test_churn_week_waits_is_approved_and_sent_once(mail, instance, postgres_db, monkeypatch):
    monkeypatch.setenv("AGENT_REPORTS_LEDGER_URL", _ledger_url(postgres_db))

    held = _run(instance, "churn_job", WEEK)
    assert held.success
    assert _received(mail, CHURN_TO) == []
    metadata = _metadata(held, "churn_email")
    assert metadata["approval"] == "awaiting approval: nothing sent"
    assert "approve_report_job" in metadata["approve_with"]
    assert f'partition: "{WEEK}"' in metadata["approve_with"]
    preview = Path(metadata["outbox_html"])
    record = json.loads((preview.parents[3] / "churn" / f"{WEEK}.json").read_text())
    assert record["summary"] in preview.read_text()
    approvals, deliveries = _rows("churn")
    assert [(r["partition"], r["status"], r["approver"]) for r in approvals] == [
        (WEEK, "awaiting", None)
    ]
    assert deliveries == []

    before = datetime.now(UTC)
    approved = _approve(instance, "churn", WEEK, "Alice Reviewer", "numbers checked")
    after = datetime.now(UTC)
    assert approved.success, _failure(approved)
    received = _received(mail, CHURN_TO)
    assert Counter(m["To"] for m in received) == Counter(CHURN_TO)
    eml = BytesParser(policy=policy.default).parsebytes(Path(metadata["outbox_eml"]).read_bytes())
    sent = {m["To"]: m for m in received}[eml["To"]]
    assert sent["Message-ID"] == eml["Message-ID"]  # what was previewed is what went out
    html = sent.get_body(preferencelist=("html",)).get_content()
    assert html.splitlines() == eml.get_body(preferencelist=("html",)).get_content().splitlines()
    [row], deliveries = _rows("churn")
    assert (row["status"], row["approver"], row["comment"]) == (
        "approved",
        "Alice Reviewer",
        "numbers checked",
    )
    assert before <= row["approved_at"] <= after
    assert [(d["recipient"], d["status"], d["attempts"]) for d in deliveries] == [
        (address, "sent", 1) for address in CHURN_TO
    ]
    assert _observation(approved)["delivery_summary"] == "2 sent"

    again = _approve(instance, "churn", WEEK, "Bob")
    assert again.success
    said = _observation(again)
    assert said["approval"].startswith(f"churn {WEEK} was already approved by Alice Reviewer")
    assert said["delivery_summary"] == "2 already_sent"
    rerun = _run(instance, "churn_job", WEEK, asset_selection=[AssetKey("churn_email")])
    assert rerun.success
    assert _metadata(rerun, "churn_email")["approval"].startswith("approved by Alice Reviewer")
    assert {d["status"] for d in _metadata(rerun, "churn_email")["deliveries"]} == {"already_sent"}
    assert len(_received(mail, CHURN_TO)) == 2
    [row], _ = _rows("churn")
    assert row["approver"] == "Alice Reviewer"


def test_approving_what_does_not_wait_fails_naming_the_window(
    instance, isolated_dirs, mail, monkeypatch
):
    unknown = _approve(instance, "market", "2024-03-08", "Alice")
    assert "unknown analysis 'market' (partition 2024-03-08)" in _failure(unknown)
    saturday = _approve(instance, "briefing", "2024-03-09", "Alice")
    assert _failure(saturday) == "briefing has no partition '2024-03-09'"
    missing = _approve(instance, "briefing", DAY, "Alice")
    assert _failure(missing).startswith(
        f"cannot approve briefing {DAY}: there is no briefing report for {DAY}"
    )

    monkeypatch.delenv("AGENT_REPORTS_APPROVAL_REQUIRED")
    _fixture_reports(isolated_dirs / "reports")
    assert _run(instance, "briefing_job", DAY).success  # sent at once, no approval asked
    assert len(_received(mail, BRIEFING_TO)) == 2
    not_waiting = _approve(instance, "briefing", DAY, "Alice")
    assert _failure(not_waiting) == (
        f"cannot approve briefing {DAY}: nothing awaits approval: briefing_email has not run "
        "for it with AGENT_REPORTS_APPROVAL_REQUIRED including briefing"
    )
    assert len(_received(mail, BRIEFING_TO)) == 2


def _evaluate(instance, at: str):
    context = build_sensor_context(
        instance=instance,
        definitions=defs,
        sensor_name=approval_overdue_alert_sensor.name,
        resources={"clock": ClockResource(fixed_time=at), "delivery": DeliveryResource()},
    )
    return approval_overdue_alert_sensor.evaluate_tick(context)


def _alerts(server) -> list[str]:
    return [str(make_header(decode_header(m["Subject"]))) for m in _received(server, [ONCALL])]


def test_briefing_waiting_past_its_deadline_alerts_once(mail, instance, isolated_dirs):
    """The briefing of Monday 2024-03-11 is due at 09:30 New York (13:30 UTC, EDT)."""
    _fixture_reports(isolated_dirs / "reports")
    for _ in range(2):  # a re-run while it waits changes nothing
        held = _run(instance, "briefing_job", DAY)
        assert held.success
        assert _metadata(held, "briefing_email")["emailed"] is False
    assert _received(mail, BRIEFING_TO) == []
    assert [r["status"] for r in _rows("briefing")[0]] == ["awaiting"]

    assert "none overdue" in _evaluate(instance, "2024-03-11T13:29:59+00:00").skip_message
    assert _alerts(mail) == []
    for at in ("2024-03-11T13:30:00+00:00", "2024-03-11T13:32:00+00:00", "2024-03-12T08:00Z"):
        assert "approval overdue" in _evaluate(instance, at).skip_message
    assert _alerts(mail) == [f"[agent_reports] briefing {DAY} awaits approval past its deadline"]
    ledger = _ledger()
    alerts = ledger.entries("ops-approval-overdue")
    ledger.engine.dispose()
    audited = audit_rows(alerts, datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
    assert [(r["kind"], r["partition"], r["recipient"], r["status"]) for r in audited] == [
        ("ops alert", "briefing_email", ONCALL, "sent")  # the monthly audit lists it as such
    ]

    assert _approve(instance, "briefing", DAY, "Carol").success
    assert sorted(m["To"] for m in _received(mail, BRIEFING_TO)) == BRIEFING_TO
    assert "0 awaiting approval" in _evaluate(instance, "2024-03-12T09:00Z").skip_message
    assert len(_alerts(mail)) == 1


def test_a_misspelt_analysis_in_the_setting_fails_the_email_step(mail, instance, monkeypatch):
    monkeypatch.setenv("AGENT_REPORTS_APPROVAL_REQUIRED", "briefing,chrun")
    result = _run(instance, "briefing_job", DAY)
    assert not result.success
    assert _received(mail, BRIEFING_TO) == []
    assert _failure(result) == (
        "AGENT_REPORTS_APPROVAL_REQUIRED='briefing,chrun': chrun cannot wait for approval "
        "(only churn, briefing e-mail their reports)"
    )


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_concurrent_approvals_have_one_first(database, request, tmp_path):
    """Two reviewers clicking at once: the conditional update lets exactly one be first,
    so exactly one approve run sends (the others find the e-mails already sent)."""
    if database == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    else:
        url = _ledger_url(request.getfixturevalue("postgres_db"))
    ledger = DeliveryLedger(url)
    ledger.request_approval("churn", WEEK, "f1", {CHURN_TO[0]: "a.eml"})
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda n: ledger.approve("churn", WEEK, f"r{n}"), range(8)))
    [row] = ledger.approval_rows()
    ledger.engine.dispose()
    firsts = [row_ for row_, first in results if first]
    assert len(firsts) == 1
    assert {r["approver"] for r, _ in results} == {row["approver"]} == {firsts[0]["approver"]}


def test_the_launchpad_shows_the_approval_fields():
    """The run config a reviewer fills in: three required fields and an optional comment."""
    schema = defs.resolve_job_def("approve_report_job").run_config_schema.config_type
    op = schema.fields["ops"].config_type.fields["approve_report"].config_type
    fields = op.fields["config"].config_type.fields
    assert {name: f.is_required for name, f in fields.items()} == {
        "analysis": True,
        "partition": True,
        "approver": True,
        "comment": False,
    }
    assert fields["analysis"].description.endswith("churn or briefing")
