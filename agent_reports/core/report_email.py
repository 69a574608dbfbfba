"""Emailing a report once per partition and recipient, on top of core/delivery.py.

Shared by every analysis that mails its report (churn today):
- `report_email`: the report as an email (text, HTML with its charts as inline `cid:`
  images, since mail clients block data URIs, and its attachments);
- `deliver_report`: one ledger key per recipient, keyed by the report's content
  fingerprint, with three rules on top of `DeliveryLedger.deliver_once`:
  1. same content already sent → `already_sent`, nothing goes out (even with `resend`);
  2. different content already sent for this week and recipient → `withheld`, unless
     `resend` is true (then `resent`);
  3. a transient failure (connection, 4xx) is retried with exponential backoff; a
     permanent one (5xx refusal, authentication) is not.
Crash semantics are the ledger's: at least once. A crash between the SMTP server's
acceptance and the ledger commit re-sends that one message on retry (same Message-ID),
so each crash can add at most one copy per recipient that was being sent to.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage

from agent_reports.core.delivery import DeliveryKey, DeliveryLedger, EmailSender, Message
from agent_reports.core.reports import Report, neutral_text

log = logging.getLogger(__name__)

PERMANENT_PREFIXES = ("recipient refused: 5", "SMTP error 5", "SMTP authentication failed")


@dataclass(frozen=True)
class RecipientResult:
    """What happened for one recipient: sent, resent, already_sent, withheld or failed."""

    recipient: str
    status: str
    attempts: int = 0
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def as_dict(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def content_fingerprint(report: Report) -> str:
    """What the recipient would read: the JSON record and the attachments' bytes."""
    digest = hashlib.sha256(report.to_json().encode())
    for attachment in report.attachments:
        digest.update(b"\0" + attachment.filename.encode() + b"\0" + attachment.data)
    return digest.hexdigest()


def report_email(
    sender: EmailSender, report: Report, subject: str, key: DeliveryKey
) -> EmailMessage:
    """Text (Markdown) and HTML alternatives, charts inline, attachments attached. The
    bodies and attachments are neutralised by the report; the subject is done here."""
    cids = [f"chart{i}.{key.digest[:16]}@agent-reports" for i in range(len(report.images))]
    html = report.to_html(image_urls=[f"cid:{cid}" for cid in cids])
    message = Message(header_text(subject), report.to_markdown(), {}, html)
    email = sender.build(message, key)
    html_part = email.get_body(preferencelist=("html",))
    for cid, image in zip(cids, report.images, strict=True):
        html_part.add_related(image.png, maintype="image", subtype="png", cid=f"<{cid}>")
    for attachment in report.attachments:
        maintype, _, subtype = attachment.content_type.partition("/")
        email.add_attachment(
            attachment.data, maintype=maintype, subtype=subtype, filename=attachment.filename
        )
    return email


def header_text(value: str) -> str:
    """A header value from data: one line, no control character (see `neutral_text`)."""
    return " ".join(neutral_text(value).split())


def _sent_fingerprints(ledger: DeliveryLedger, key: DeliveryKey) -> set[str]:
    return {
        row["fingerprint"]
        for row in ledger.entries(key.report)
        if row["partition"] == key.partition
        and row["recipient"] == key.recipient
        and row["status"] == "sent"
    }


def _permanent(reason: str | None) -> bool:
    return bool(reason) and reason.startswith(PERMANENT_PREFIXES)


def deliver_report(
    ledger: DeliveryLedger,
    sender: EmailSender,
    keys: Sequence[DeliveryKey],
    build: Callable[[DeliveryKey], EmailMessage],
    resend: bool = False,
    attempts: int = 3,
    backoff_seconds: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
) -> list[RecipientResult]:
    """Deliver each key's email at most once (see the module docstring for the rules)."""
    results = []
    for key in keys:
        sent = _sent_fingerprints(ledger, key)
        earlier = sent - {key.fingerprint}
        if earlier and key.fingerprint not in sent and not resend:
            reason = "an earlier version of this week's report was sent; run with resend: true"
            results.append(RecipientResult(key.recipient, "withheld", 0, reason))
            continue
        email = build(key)
        for attempt in range(1, attempts + 1):
            outcome = ledger.deliver_once(key, lambda e=email, r=key.recipient: sender.send(e, r))
            if outcome.ok or _permanent(outcome.reason) or attempt == attempts:
                break
            log.warning("email to %s failed (%s); retrying", key.recipient, outcome.reason)
            sleep(backoff_seconds * 2 ** (attempt - 1))
        status = "resent" if outcome.status == "sent" and earlier else outcome.status
        results.append(RecipientResult(key.recipient, status, attempt, outcome.reason))
    return results
