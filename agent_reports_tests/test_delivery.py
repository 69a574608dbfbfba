"""The notifier and its ledger against real servers: SQLite and PostgreSQL ledgers, a
recipient refused by a real SMTP server, a failing webhook, and a ledger write that fails
after the send (the retry sends again, with the same Message-ID: at least once); and the
outbox that takes the e-mails when no SMTP host is set, with real reports."""

import os
import stat
import subprocess
import sys
import threading
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox
from dagster import MetadataValue

from agent_reports.core.delivery import (
    PREVIEW_RECIPIENT,
    DeliveryKey,
    DeliveryLedger,
    EmailSender,
    Message,
    Notifier,
    WebhookSender,
    incomplete_smtp_settings,
)
from agent_reports.core.files import current_umask, write_atomic
from agent_reports_tests.conftest import free_port

MESSAGE = Message(subject="Churn report 2024-W10", text="body", payload={"n": 1})


class RefusingMailbox(Mailbox):
    """A real SMTP server that refuses one address at RCPT time."""

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("nobody@"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"


@pytest.fixture
def refusing_smtp(tmp_path):
    controller = Controller(
        RefusingMailbox(tmp_path / "mail"), hostname="127.0.0.1", port=free_port()
    )
    controller.start()
    yield controller, tmp_path / "mail"
    controller.stop()


def _count(maildir) -> int:
    import mailbox

    return len(list(mailbox.Maildir(maildir, create=False)))


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request, tmp_path):
    if request.param == "sqlite":
        yield DeliveryLedger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
        return
    pg = request.getfixturevalue("postgres_db")
    url = f"postgresql+psycopg2://{pg['DAGSTER_PG_USER']}@{pg['DAGSTER_PG_HOST']}:{pg['DAGSTER_PG_PORT']}/{pg['DAGSTER_PG_DB']}"
    ledger = DeliveryLedger(url)
    yield ledger
    ledger.engine.dispose()


def test_one_refused_recipient_does_not_lose_the_others(ledger, refusing_smtp) -> None:
    controller, maildir = refusing_smtp
    email = EmailSender("127.0.0.1", controller.port, "reports@example.com", security="none")
    notifier = Notifier(ledger, email)
    recipients = ["a@example.com", "nobody@example.com", "b@example.com"]
    outcomes = notifier.notify("churn", "2024-03-04", "fp1", MESSAGE, recipients)
    assert [o.status for o in outcomes] == ["sent", "failed", "sent"]
    assert "550" in outcomes[1].reason
    assert _count(maildir) == 2
    again = notifier.notify("churn", "2024-03-04", "fp1", MESSAGE, recipients)
    assert [o.status for o in again] == ["already_sent", "failed", "already_sent"]
    assert _count(maildir) == 2
    rows = {r["recipient"]: r for r in ledger.entries("churn")}
    assert rows["nobody@example.com"]["status"] == "failed"
    assert rows["nobody@example.com"]["attempts"] == 2
    assert rows["a@example.com"]["status"] == "sent"
    # New content (another fingerprint) is a new delivery.
    assert (
        notifier.notify("churn", "2024-03-04", "fp2", MESSAGE, ["a@example.com"])[0].status
        == "sent"
    )


CRASH = """
import os, sys
from agent_reports.core.delivery import DeliveryKey, DeliveryLedger, EmailSender, Message
ledger = DeliveryLedger(sys.argv[1])
email = EmailSender("127.0.0.1", int(sys.argv[2]), "reports@example.com", security="none")
key = DeliveryKey("anomalies", "2024-03-02-15:00", "oncall@example.com", "severity:high")
message = email.build(Message(subject="s", text="t", payload={}), key)
def send_then_die():
    email.send(message, key.recipient)
    os._exit(9)  # killed after the send, before the ledger commit
ledger.deliver_once(key, send_then_die)
"""


def test_a_crash_between_send_and_ledger_write_resends_with_the_same_message_id(
    tmp_path, smtp_server
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    crashed = subprocess.run(
        [sys.executable, "-c", CRASH, url, str(smtp_server.port)], capture_output=True, timeout=60
    )
    assert crashed.returncode == 9, crashed.stderr.decode()[-2000:]
    assert len(smtp_server.messages()) == 1

    ledger = DeliveryLedger(url)  # the crashed transaction was rolled back
    assert ledger.entries() == []
    email = EmailSender(smtp_server.host, smtp_server.port, "reports@example.com", security="none")
    key = DeliveryKey("anomalies", "2024-03-02-15:00", "oncall@example.com", "severity:high")
    message = email.build(Message(subject="s", text="t", payload={}), key)
    for expected in ("sent", "already_sent", "already_sent"):
        assert (
            ledger.deliver_once(key, lambda: email.send(message, key.recipient)).status == expected
        )
    ids = [m["Message-ID"] for m in smtp_server.messages()]
    assert len(ids) == 2 and set(ids) == {key.message_id("example.com")}


class _Flaky(BaseHTTPRequestHandler):
    answers: ClassVar[list[int]] = []
    received: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        type(self).received.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(type(self).answers.pop(0))
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_webhook_failure_is_reported_and_retried_once_then_never(ledger) -> None:
    _Flaky.answers, _Flaky.received = [503, 200], []
    server = HTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        webhook = WebhookSender(f"http://127.0.0.1:{server.server_port}/secret-path")
        notifier = Notifier(ledger, webhook=webhook)
        [first] = notifier.notify("anomalies", "2024-03-02-15:00", "severity:high", MESSAGE, [])
        assert first.status == "failed" and first.reason == "webhook answered HTTP 503"
        [second] = notifier.notify("anomalies", "2024-03-02-15:00", "severity:high", MESSAGE, [])
        [third] = notifier.notify("anomalies", "2024-03-02-15:00", "severity:high", MESSAGE, [])
        assert (second.status, third.status) == ("sent", "already_sent")
        assert len(_Flaky.received) == 2
        assert "secret-path" not in repr(webhook) and "secret" not in first.key.recipient
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------------------- the outbox

SMTP_VARIABLES = [
    f"AGENT_REPORTS_SMTP_{name}" for name in ("HOST", "PORT", "SECURITY", "USER", "PASSWORD")
]
WEEK = "2024-03-04"
DAY = "2024-03-11"


@pytest.fixture
def no_smtp(monkeypatch):
    """No e-mail configured at all, and the usual umask (restored afterwards)."""
    for name in [*SMTP_VARIABLES, "AGENT_REPORTS_CHURN_RECIPIENTS"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AGENT_REPORTS_BRIEFING_RECIPIENTS", raising=False)
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _materialization(result, asset: str, partition: str):
    [event] = [m for m in result.asset_materializations_for_node(asset) if m.partition == partition]
    return event.metadata


def test_without_smtp_the_churn_email_is_written_to_the_outbox(
    run_partition, isolated_dirs, no_smtp
):
    """A real churn report (demo customers, charts, CSV attachment) with nothing configured:
    one preview e-mail in the outbox, its HTML readable on its own, linked from the UI,
    the same bytes on a re-run, readable by others (0644), and nothing in the ledger."""
    result = run_partition("churn_job", WEEK)
    folder = isolated_dirs / "reports" / "outbox" / "churn" / WEEK
    eml, html = folder / "preview.eml", folder / "preview.html"
    email = message_from_bytes(eml.read_bytes(), policy=policy.default)
    assert email["To"] == PREVIEW_RECIPIENT
    assert email["Subject"].startswith(f"Churn report — week of {WEEK}")
    attachments = [part.get_filename() for part in email.iter_attachments()]
    assert any(name and name.endswith(".csv") for name in attachments), attachments
    assert any(part.get_content_type() == "image/png" for part in email.walk())
    preview = html.read_text()
    assert "data:image/png;base64," in preview and "cid:" not in preview
    metadata = _materialization(result, "churn_email", WEEK)
    assert metadata["outbox_html"] == MetadataValue.path(str(html))
    assert metadata["outbox_eml"] == MetadataValue.path(str(eml))
    for path in (eml, html, isolated_dirs / "reports" / "churn" / f"{WEEK}.html"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path

    first = eml.read_bytes()
    run_partition("churn_job", WEEK)
    assert eml.read_bytes() == first
    assert DeliveryLedger().entries() == []  # writing is not sending: SMTP later still sends


def test_recipients_without_an_smtp_host_write_the_outbox_then_fail_naming_the_variable(
    run_partition, isolated_dirs, no_smtp, monkeypatch
):
    monkeypatch.setenv("AGENT_REPORTS_BRIEFING_RECIPIENTS", "ny-desk@example.com, cto@example.com")
    result = run_partition("briefing_job", DAY, raise_on_error=False)
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failure.step_key == "briefing_email"
    message = failure.event_specific_data.error.message
    assert "AGENT_REPORTS_BRIEFING_RECIPIENTS is set but AGENT_REPORTS_SMTP_HOST is not" in message
    assert "Traceback" not in message
    folder = isolated_dirs / "reports" / "outbox" / "briefing" / DAY
    assert sorted(p.name for p in folder.glob("*.eml")) == [
        "cto@example.com.eml",
        "ny-desk@example.com.eml",
    ]
    email = message_from_bytes((folder / "cto@example.com.eml").read_bytes(), policy=policy.default)
    assert email["Subject"] == f"[agent_reports] Morning briefing — {DAY}"
    assert "<html" in (folder / "cto@example.com.html").read_text().lower()
    assert DeliveryLedger().entries() == []


@pytest.mark.parametrize(
    ("settings", "recipients", "expected"),
    [
        ({}, [], None),  # nothing configured: the outbox
        ({"AGENT_REPORTS_SMTP_HOST": "mail"}, ["a@x"], None),
        ({}, ["a@x"], "CHURN_TO is set but AGENT_REPORTS_SMTP_HOST is not"),
        (
            {"AGENT_REPORTS_SMTP_USER": "u", "AGENT_REPORTS_SMTP_PORT": "25"},
            [],
            "AGENT_REPORTS_SMTP_PORT and AGENT_REPORTS_SMTP_USER are set but "
            "AGENT_REPORTS_SMTP_HOST is not",
        ),
        (
            {"AGENT_REPORTS_SMTP_HOST": "mail", "AGENT_REPORTS_SMTP_USER": "u"},
            ["a@x"],
            "AGENT_REPORTS_SMTP_USER is set but AGENT_REPORTS_SMTP_PASSWORD is not",
        ),
    ],
)
def test_a_half_way_email_configuration_names_what_is_missing(settings, recipients, expected):
    assert incomplete_smtp_settings(settings, "CHURN_TO", recipients) == expected


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_written_files_honour_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        write_atomic(tmp_path / "report.html", b"<p>ok</p>")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "report.html").stat().st_mode) == mode
    assert current_umask() == previous
