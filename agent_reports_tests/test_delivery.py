"""The notifier and its ledger against real servers: SQLite and PostgreSQL ledgers, a
recipient refused by a real SMTP server, a failing webhook, and a ledger write that fails
after the send (the retry sends again, with the same Message-ID: at least once)."""

import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox

from agent_reports.core.delivery import (
    DeliveryKey,
    DeliveryLedger,
    EmailSender,
    Message,
    Notifier,
    WebhookSender,
)
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
