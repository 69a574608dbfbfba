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
Where the analysis is named in AGENT_REPORTS_APPROVAL_REQUIRED, `hold_for_approval`
writes the window's e-mails to the outbox as their preview and records them as awaiting
approval; the e-mail step sends only a version that was approved (ops/approval.py).

Crash semantics are the ledger's: at least once. A crash between the SMTP server's
acceptance and the ledger commit re-sends that one message on retry (same Message-ID),
so each crash can add at most one copy per recipient that was being sent to.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from dagster import Failure, MetadataValue

from agent_reports.core import settings
from agent_reports.core.delivery import (
    APPROVED,
    DeliveryKey,
    DeliveryLedger,
    EmailComposer,
    EmailSender,
    Message,
    Outbox,
    OutboxEntry,
)
from agent_reports.core.publishing import outbox_metadata
from agent_reports.core.reports import Report, neutral_text

log = logging.getLogger(__name__)

APPROVAL_VARIABLE = "AGENT_REPORTS_APPROVAL_REQUIRED"
# The analyses that e-mail their reports, hence can wait for approval.
APPROVABLE = ("churn", "briefing")
APPROVE_JOB, APPROVE_OP = "approve_report_job", "approve_report"
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
    sender: EmailComposer, report: Report, subject: str, key: DeliveryKey
) -> EmailMessage:
    """Text (Markdown) and HTML alternatives, charts inline, attachments attached. The
    bodies and attachments are neutralised by the report; the subject is done here. The
    SVG charts carry their figures as a table too: some mail clients drop inline SVG."""
    cids = [f"chart{i}.{key.digest[:16]}@agent-reports" for i in range(len(report.images))]
    html = report.to_html(image_urls=[f"cid:{cid}" for cid in cids], chart_tables=True)
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


# ------------------------------------------------------------------------------- approval


def approval_required(analysis: str) -> bool:
    """Whether `analysis` is named in AGENT_REPORTS_APPROVAL_REQUIRED (comma-separated, read
    at run time; unset: no analysis waits). A name that e-mails nothing is an error, not a
    silent no-op: a typo would otherwise send what the team meant to review."""
    value = settings.env(APPROVAL_VARIABLE, "") or ""
    names = {name.strip() for name in value.split(",") if name.strip()}
    unknown = sorted(names - set(APPROVABLE))
    if unknown:
        raise Failure(
            f"{APPROVAL_VARIABLE}={value!r}: {', '.join(unknown)} cannot wait for approval "
            f"(only {', '.join(APPROVABLE)} e-mail their reports)",
            allow_retries=False,
        )
    return analysis in names


def hold_for_approval(
    ledger: DeliveryLedger,
    outbox: Outbox,
    keys: Sequence[DeliveryKey],
    build: Callable[[DeliveryKey], EmailMessage],
) -> tuple[dict[str, Any], list[OutboxEntry]]:
    """Write the window's e-mails (one per key, all of one version) to the outbox as their
    preview and record that version as awaiting approval, unless it was approved already.
    Returns the ledger's approval row and the preview files; nothing is sent here."""
    entries = [outbox.write(build(key), key) for key in keys]
    first = keys[0]
    previews = {entry.recipient: str(entry.eml) for entry in entries}
    row = ledger.request_approval(first.report, first.partition, first.fingerprint, previews)
    return row, entries


def approval_metadata(
    row: dict[str, Any], entries: Sequence[OutboxEntry], reports_root: Path
) -> dict[str, Any]:
    """The e-mail asset's metadata for a window under approval: its status, the preview
    links and, while it waits, the run config that approves it from the Launchpad."""
    if row["status"] == APPROVED:
        when = as_utc(row["approved_at"]).isoformat()
        return {"approval": f"approved by {row['approver']} at {when}"}
    config = (
        f"ops:\n  {APPROVE_OP}:\n    config:\n      analysis: {row['report']}\n"
        f'      partition: {json.dumps(row["partition"])}\n      approver: "your name"\n'
        '      comment: ""\n'
    )
    return {
        "approval": "awaiting approval: nothing sent",
        "approve_with": MetadataValue.md(
            f"Read the preview (`outbox_html`), then launch **{APPROVE_JOB}** from the "
            f"Launchpad with:\n\n```yaml\n{config}```"
        ),
        **outbox_metadata(entries, reports_root),
    }


def as_utc(moment: datetime) -> datetime:
    """A ledger timestamp as UTC (SQLite returns them without their offset)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
