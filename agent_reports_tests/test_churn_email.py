"""The weekly churn email against a real SMTP server and a PostgreSQL delivery ledger: once per
week and recipient across re-runs, withheld or resent when the report changes, at most one
extra copy after a crash between the send and the ledger commit, retried with backoff, and a
refused recipient never loses the others. Messages are read back from the server's Maildir."""

import json
import mailbox
import os
import subprocess
import sys
import textwrap
from collections import Counter
from datetime import date
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pandas as pd
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox

from agent_reports.churn.analysis import customers_as_of
from agent_reports.core.customers import demo_customers
from agent_reports.core.delivery import DeliveryLedger
from agent_reports_tests.conftest import free_port

WEEK = "2024-03-04"
WEEK_END = date(2024, 3, 11)
RECIPIENTS = ["cfo@example.com", "ops@example.com"]
HOSTILE_ID = "<script>alert(1)</script>"
RESEND = {"ops": {"churn_email": {"config": {"resend": True}}}}


def _ledger_url(pg: dict[str, str]) -> str:
    return (
        f"postgresql+psycopg2://{pg['DAGSTER_PG_USER']}@{pg['DAGSTER_PG_HOST']}:"
        f"{pg['DAGSTER_PG_PORT']}/{pg['DAGSTER_PG_DB']}"
    )


def _mail_env(monkeypatch, port: int, recipients: list[str], ledger_url: str) -> None:
    monkeypatch.setenv("AGENT_REPORTS_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("AGENT_REPORTS_SMTP_PORT", str(port))
    monkeypatch.setenv("AGENT_REPORTS_SMTP_SECURITY", "none")
    monkeypatch.setenv("AGENT_REPORTS_SMTP_FROM", "churn-reports@example.com")
    monkeypatch.setenv("AGENT_REPORTS_CHURN_RECIPIENTS", ", ".join(recipients))
    monkeypatch.setenv("AGENT_REPORTS_LEDGER_URL", ledger_url)


@pytest.fixture
def mail(smtp_server, postgres_db, monkeypatch):
    _mail_env(monkeypatch, smtp_server.port, RECIPIENTS, _ledger_url(postgres_db))
    return smtp_server


def _parsed(server) -> list:
    parser = BytesParser(policy=policy.default)
    return [parser.parsebytes(message.as_bytes()) for message in server.messages()]


def _per_recipient(server) -> Counter:
    return Counter(message["To"] for message in _parsed(server))


def _deliveries(result) -> dict[str, str]:
    [event] = [
        e
        for e in result.get_asset_materialization_events()
        if e.asset_key.to_user_string() == "churn_email"
    ]
    metadata = event.event_specific_data.materialization.metadata
    return {d["recipient"]: d["status"] for d in metadata["deliveries"].value}


def _write_telco_csv(data_dir: Path, contract_of_first: str | None = None) -> Path:
    """The demo base as of the week's end, in the public set's layout (no dates), plus a
    customer whose id is markup and whose profile is as risky as it gets."""
    base = customers_as_of(demo_customers(7), WEEK_END).head(1500).copy()
    risky = base.iloc[[0]].assign(
        customer_id=HOSTILE_ID,
        contract="Month-to-month",
        internet_service="Fiber optic",
        payment_method="Electronic check",
        tech_support="No",
        senior_citizen="Yes",
        tenure=0.0,
        churned=False,
        monthly_charges=99.0,
        total_charges=float("nan"),
    )
    base = pd.concat([base, risky], ignore_index=True)
    if contract_of_first:
        base.loc[1, "contract"] = contract_of_first
    telco = base.rename(
        columns={
            "customer_id": "customerID",
            "contract": "Contract",
            "tenure": "tenure",
            "monthly_charges": "MonthlyCharges",
            "total_charges": "TotalCharges",
            "payment_method": "PaymentMethod",
            "internet_service": "InternetService",
            "tech_support": "TechSupport",
            "senior_citizen": "SeniorCitizen",
        }
    )
    telco["Churn"] = base["churned"].map({True: "Yes", False: "No"})
    telco["SeniorCitizen"] = (base["senior_citizen"] == "Yes").astype(int)
    columns = ["customerID", "SeniorCitizen", "tenure", "InternetService", "TechSupport"]
    columns += ["Contract", "PaymentMethod", "MonthlyCharges", "TotalCharges", "Churn"]
    path = data_dir / "customers" / "telco.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    telco[columns].to_csv(path, index=False)
    return path


def test_three_materialisations_send_one_email_per_recipient(mail, run_partition, isolated_dirs):
    statuses = [_deliveries(run_partition("churn_job", WEEK)) for _ in range(3)]
    assert statuses[0] == dict.fromkeys(RECIPIENTS, "sent")
    assert statuses[1] == statuses[2] == dict.fromkeys(RECIPIENTS, "already_sent")
    assert _per_recipient(mail) == Counter(RECIPIENTS)

    ledger = DeliveryLedger(os.environ["AGENT_REPORTS_LEDGER_URL"])
    rows = ledger.entries("churn")
    ledger.engine.dispose()
    assert [(r["partition"], r["recipient"], r["status"], r["attempts"]) for r in rows] == [
        (WEEK, address, "sent", 1) for address in RECIPIENTS
    ]

    folder = isolated_dirs / "reports" / "churn"
    record = json.loads((folder / f"{WEEK}.json").read_text())
    for email in _parsed(mail):
        high = record["metrics"]["risk"]["bands"]["high"]
        assert email["Subject"] == f"Churn report — week of {WEEK}: {high} customers at high risk"
        assert email["From"] == "churn-reports@example.com"
        html = email.get_body(preferencelist=("html",)).get_content()
        assert record["summary"] in html
        assert f"cross-validated ROC AUC {record['metrics']['model']['roc_auc']:.3f}" in html
        images = [p for p in email.walk() if p.get_content_type() == "image/png"]
        assert len(images) == 2
        for image in images:
            assert image.get_content().startswith(b"\x89PNG")
            assert f"cid:{image['Content-ID'].strip('<>')}" in html
        [attachment] = list(email.iter_attachments())
        assert attachment.get_filename() == "at-risk-customers.csv"
        csv_bytes = attachment.get_content()
        csv_bytes = csv_bytes.encode() if isinstance(csv_bytes, str) else csv_bytes
        assert csv_bytes == (folder / f"{WEEK}.at-risk-customers.csv").read_bytes()
        top = record["metrics"]["top_at_risk"][0]
        assert csv_bytes.decode().splitlines()[1].startswith(f"1,{top['customer_id']},")
        text = email.get_body(preferencelist=("plain",)).get_content()
        assert text.startswith(f"# Churn report — {WEEK}")


def test_a_changed_report_is_withheld_unless_resend(
    mail, run_partition, isolated_dirs, monkeypatch
):
    data = isolated_dirs / "data"
    monkeypatch.setenv("AGENT_REPORTS_SOURCE", "files")
    monkeypatch.setenv("AGENT_REPORTS_DATA_DIR", str(data))
    _write_telco_csv(data)
    assert set(_deliveries(run_partition("churn_job", WEEK)).values()) == {"sent"}
    first_html = (isolated_dirs / "reports" / "churn" / f"{WEEK}.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in first_html
    assert HOSTILE_ID not in first_html

    _write_telco_csv(data, contract_of_first="Two year")  # the customers changed
    assert set(_deliveries(run_partition("churn_job", WEEK)).values()) == {"withheld"}
    assert _per_recipient(mail) == Counter(RECIPIENTS)

    assert set(_deliveries(run_partition("churn_job", WEEK, run_config=RESEND)).values()) == {
        "resent"
    }
    assert set(_deliveries(run_partition("churn_job", WEEK, run_config=RESEND)).values()) == {
        "already_sent"
    }
    assert _per_recipient(mail) == Counter(RECIPIENTS * 2)
    for email in _parsed(mail):
        [attachment] = list(email.iter_attachments())
        content = attachment.get_content()
        content = content.decode() if isinstance(content, bytes) else content
        assert HOSTILE_ID in content  # the CSV carries the raw id; the HTML escapes it
        html = email.get_body(preferencelist=("html",)).get_content()
        assert HOSTILE_ID not in html


CRASH_AFTER_SEND = textwrap.dedent(
    """
    import os, signal
    from agent_reports.core import delivery

    real_send = delivery.EmailSender.send

    def send_then_die(self, email, recipient):
        real_send(self, email, recipient)  # the SMTP server has accepted the message
        os.kill(os.getpid(), signal.SIGKILL)  # ...and the run dies before the ledger commit

    delivery.EmailSender.send = send_then_die
    from dagster import DagsterInstance
    from agent_reports.definitions import defs

    defs.resolve_job_def("churn_job").execute_in_process(
        partition_key="2024-03-04", instance=DagsterInstance.ephemeral()
    )
    """
)


def test_a_crash_between_send_and_ledger_commit_adds_at_most_one_copy(mail, run_partition):
    """At least once: the message the crash interrupted is sent again, with the same
    Message-ID; nobody gets a third copy, and the other recipient gets one."""
    crashed = subprocess.run(
        [sys.executable, "-c", CRASH_AFTER_SEND], capture_output=True, timeout=120, check=False
    )
    assert crashed.returncode == -9, crashed.stderr.decode()[-2000:]
    assert _per_recipient(mail) == Counter({RECIPIENTS[0]: 1})

    assert _deliveries(run_partition("churn_job", WEEK)) == dict.fromkeys(RECIPIENTS, "sent")
    assert _deliveries(run_partition("churn_job", WEEK)) == dict.fromkeys(
        RECIPIENTS, "already_sent"
    )
    assert _per_recipient(mail) == Counter({RECIPIENTS[0]: 2, RECIPIENTS[1]: 1})
    ids = {m["Message-ID"] for m in _parsed(mail) if m["To"] == RECIPIENTS[0]}
    assert len(ids) == 1  # the duplicate is recognisable as one message


class PickyMailbox(Mailbox):
    """A real SMTP server that refuses one address for good and another once, transiently."""

    def __init__(self, maildir: Path):
        super().__init__(maildir)
        self.rcpt_attempts: Counter = Counter()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        self.rcpt_attempts[address] += 1
        if address.startswith("nobody@"):
            return "550 5.1.1 no such user"
        if address.startswith("flaky@") and self.rcpt_attempts[address] == 1:
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"


def test_a_refused_recipient_does_not_lose_the_others_and_transient_errors_retry(
    run_partition, postgres_db, monkeypatch, tmp_path
):
    handler = PickyMailbox(tmp_path / "picky")
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        recipients = ["flaky@example.com", "nobody@example.com", "ops@example.com"]
        _mail_env(monkeypatch, controller.port, recipients, _ledger_url(postgres_db))
        config = {"ops": {"churn_email": {"config": {"retry_backoff_seconds": 0.2}}}}
        result = run_partition("churn_job", WEEK, raise_on_error=False, run_config=config)
        assert not result.success
        [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        assert "1 email(s) failed" in failure.event_specific_data.error.message
        assert handler.rcpt_attempts == Counter({"flaky@example.com": 2, "nobody@example.com": 1,
                                                  "ops@example.com": 1})  # fmt: skip
        received = Counter(m["To"] for m in mailbox.Maildir(tmp_path / "picky", create=False))
        assert received == Counter(["flaky@example.com", "ops@example.com"])

        # A re-run sends only the failed one (refused again): no duplicates for the others.
        run_partition("churn_job", WEEK, raise_on_error=False, run_config=config)
        received = Counter(m["To"] for m in mailbox.Maildir(tmp_path / "picky", create=False))
        assert received == Counter(["flaky@example.com", "ops@example.com"])
        ledger = DeliveryLedger(_ledger_url(postgres_db))
        rows = {r["recipient"]: (r["status"], r["attempts"]) for r in ledger.entries("churn")}
        ledger.engine.dispose()
        assert rows == {
            "flaky@example.com": ("sent", 2),
            "nobody@example.com": ("failed", 2),
            "ops@example.com": ("sent", 1),
        }
    finally:
        controller.stop()


def _churn_reply() -> dict:
    return {
        "summary": "Risk concentrates in month-to-month contracts.",
        "findings": [
            {
                "title": "Month-to-month churns most",
                "detail": "Its churn rate is well above the base rate.",
                "subjects": ["Month-to-month"],
            }
        ],
        "actions": [
            {
                "title": "Offer annual contracts",
                "detail": "Discounted one-year contracts to the riskiest month-to-month customers.",
                "subjects": ["Month-to-month", "contract"],
            }
        ],
    }


def test_a_degraded_report_is_held_then_the_good_one_goes_out_once(
    mail, llm_server, run_partition, monkeypatch, isolated_dirs
):
    llm_server.use(monkeypatch)
    no_retries = {"resources": {"analyst": {"config": {"max_retries": 0}}}}
    llm_server.script({"type": "fail", "status": 503, "times": None})
    result = run_partition("churn_job", WEEK, run_config=no_retries)
    assert _deliveries(result) == {}
    assert _per_recipient(mail) == Counter()
    record = json.loads((isolated_dirs / "reports" / "churn" / f"{WEEK}.json").read_text())
    assert record["degraded"] is True

    llm_server.reset()
    llm_server.reply_json(_churn_reply())
    for _ in range(2):
        run_partition("churn_job", WEEK, run_config=no_retries)
    assert _per_recipient(mail) == Counter(RECIPIENTS)
    record = json.loads((isolated_dirs / "reports" / "churn" / f"{WEEK}.json").read_text())
    assert record["generated_by"] == "gpt-4o-mini" and record["degraded"] is False
    titles = [f["title"] for f in record["findings"]]  # the code's spike finding, then the LLM's
    assert [t for t in titles if not t.startswith("Churn spike in")] == [
        "Month-to-month churns most",
        "Action: Offer annual contracts",
    ]
    [request] = llm_server.chat_requests()  # the second run was answered from the cache
    user = request["body"]["messages"][1]["content"]
    data = json.loads(user.rpartition("<data>")[2].removesuffix("</data>"))  # after the rules
    assert len(data["top_at_risk"]) == 10 and "signup_date" not in user


def test_a_backfill_range_sends_each_week_once_and_matches_single_runs(
    mail, run_partition, isolated_dirs
):
    """One single-run backfill over three weeks, then each week on its own: the same report
    bytes either way, and still one email per week and recipient."""
    from dagster import DagsterInstance

    from agent_reports.definitions import defs

    weeks = ["2024-03-04", "2024-03-11", "2024-03-18"]
    result = defs.resolve_job_def("churn_job").execute_in_process(
        instance=DagsterInstance.ephemeral(),
        tags={
            "dagster/asset_partition_range_start": weeks[0],
            "dagster/asset_partition_range_end": weeks[-1],
        },
    )
    assert result.success
    folder = isolated_dirs / "reports" / "churn"
    from_range = {w: (folder / f"{w}.html").read_bytes() for w in weeks}
    sent = Counter((m["To"], m["Subject"].split("week of ")[1][:10]) for m in _parsed(mail))
    assert sent == Counter((r, w) for r in RECIPIENTS for w in weeks)
    for week in weeks:
        assert _deliveries(run_partition("churn_job", week)) == dict.fromkeys(
            RECIPIENTS, "already_sent"
        )
        assert (folder / f"{week}.html").read_bytes() == from_range[week]
    assert len(mail.messages()) == 6


def test_recipients_without_an_smtp_server_fail_the_step_clearly(run_partition, monkeypatch):
    monkeypatch.setenv("AGENT_REPORTS_CHURN_RECIPIENTS", "ops@example.com")
    monkeypatch.delenv("AGENT_REPORTS_SMTP_HOST", raising=False)
    result = run_partition("churn_job", WEEK, raise_on_error=False)
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failure.step_key == "churn_email"
    message = failure.event_specific_data.error.message
    assert "AGENT_REPORTS_SMTP_HOST is not" in message and "Traceback" not in message
