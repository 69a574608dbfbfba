"""A person approves a report's e-mail before it goes out (AGENT_REPORTS_APPROVAL_REQUIRED).

The e-mail step of an analysis under approval writes the window's e-mails to the outbox
as their preview, records them in the ledger as awaiting approval and sends nothing
(core/report_email.py). A reviewer reads the preview linked in the e-mail asset's
metadata and launches `approve_report_job` from the Launchpad with the analysis, the
partition key, their name and an optional comment. The job records who approved and when,
then sends exactly the previewed e-mails through the ledger, once per recipient: a second
approval, or a re-run of the e-mail asset, finds them sent and sends nothing more.

The job is partition-less: one job serves every analysis (their partitions differ: UTC
weeks, New York weekdays), an approval is a decision about an existing e-mail rather than
a new materialisation, and the Launchpad shows its four fields with their descriptions.
It logs an observation on the e-mail asset's partition, so the approval shows in that
asset's history.
"""

import json
from collections import Counter
from datetime import datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from dagster import (
    AssetKey,
    AssetObservation,
    Config,
    Failure,
    MetadataValue,
    OpExecutionContext,
    job,
    op,
)
from pydantic import Field

from agent_reports.briefing.partitions import BRIEFING
from agent_reports.churn.partitions import CHURN
from agent_reports.core.declaration import Analysis
from agent_reports.core.delivery import (
    ApprovalError,
    DeliveryKey,
    DeliveryLedger,
    EmailSender,
)
from agent_reports.core.report_email import (
    APPROVABLE,
    APPROVAL_VARIABLE,
    APPROVE_JOB,
    APPROVE_OP,
    RecipientResult,
    as_utc,
    deliver_report,
)
from agent_reports.core.resources import DeliveryResource, ReportStoreResource

DECLARED: dict[str, Analysis] = {"churn": CHURN, "briefing": BRIEFING}
assert set(DECLARED) == set(APPROVABLE)


class ApproveReportConfig(Config):
    """Run config of the approve job (Launchpad: ops → approve_report → config)."""

    analysis: str = Field(
        description=f"the analysis whose e-mail awaits approval: {' or '.join(APPROVABLE)}"
    )
    partition: str = Field(
        description="the window's partition key, as on the e-mail asset (e.g. 2024-03-04)"
    )
    approver: str = Field(description="your name, recorded in the ledger with the time")
    comment: str = Field(default="", description="optional; recorded with the approval")


def email_asset(analysis: str) -> AssetKey:
    return AssetKey(f"{analysis}_email")


def window_deadline(analysis: str, partition: str) -> datetime:
    """When the report of this window is due (its declared deadline)."""
    declared = DECLARED[analysis]
    window = declared.partitions.time_window_for_partition_key(partition)
    return declared.deadline.due(window.start, window.end)


def _checked(config: ApproveReportConfig) -> tuple[str, str, str]:
    """(analysis, partition, approver) or a Failure that names what is wrong."""
    analysis, partition = config.analysis.strip(), config.partition.strip()
    if analysis not in DECLARED:
        raise Failure(
            f"unknown analysis {analysis!r} (partition {partition}): only "
            f"{', '.join(APPROVABLE)} e-mail their reports",
            allow_retries=False,
        )
    if not DECLARED[analysis].partitions.has_partition_key(partition):
        raise Failure(f"{analysis} has no partition {partition!r}", allow_retries=False)
    if not config.approver.strip():
        raise Failure(f"{analysis} {partition}: approver is empty", allow_retries=False)
    return analysis, partition, config.approver.strip()


def _nothing_awaits(analysis: str, partition: str, reports_root: Path) -> Failure:
    report = reports_root / analysis / f"{partition}.json"
    if not report.exists():
        why = f"there is no {analysis} report for {partition} ({report} does not exist)"
    else:
        why = (
            f"nothing awaits approval: {email_asset(analysis).to_user_string()} has not run "
            f"for it with {APPROVAL_VARIABLE} including {analysis}"
        )
    return Failure(f"cannot approve {analysis} {partition}: {why}", allow_retries=False)


def stored_email(path: Path, key: DeliveryKey) -> EmailMessage:
    """The previewed e-mail for `key`, as the outbox wrote it; refuses a file that belongs
    to another version (the reviewer approved what they read, nothing else)."""
    if not path.exists():
        raise ApprovalError(f"{key.report} {key.partition}: preview {path} is missing")
    email = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
    if email["X-Agent-Reports-Key"] != f"{key.report}/{key.partition}/{key.fingerprint}":
        raise ApprovalError(f"{key.report} {key.partition}: {path} is not the approved version")
    return email


def send_approved(
    ledger: DeliveryLedger, sender: EmailSender, row: dict[str, Any]
) -> list[RecipientResult]:
    """Send the approved version's previewed e-mails, once per recipient (the ledger's
    rules). An approval is explicit, so it sends a changed version too (`resend`)."""
    previews = json.loads(row["previews"])
    keys = [
        DeliveryKey(row["report"], row["partition"], recipient, row["fingerprint"])
        for recipient in sorted(previews)
    ]
    build = lambda key: stored_email(Path(previews[key.recipient]), key)  # noqa: E731
    return deliver_report(ledger, sender, keys, build, resend=True)


@op(name=APPROVE_OP, description="Approve one window's e-mail and send it once.")
def approve_report(
    context: OpExecutionContext,
    config: ApproveReportConfig,
    delivery: DeliveryResource,
    reports: ReportStoreResource,
) -> None:
    """Record the approval (who, when), then send the previewed e-mails through the ledger."""
    analysis, partition, approver = _checked(config)
    ledger, sender = delivery.ledger(), delivery.email_sender()
    try:
        try:
            row, first = ledger.approve(analysis, partition, approver, config.comment or None)
        except ApprovalError:
            raise _nothing_awaits(analysis, partition, reports.path()) from None
        results = send_approved(ledger, sender, row) if sender else []
    finally:
        ledger.engine.dispose()
    when = as_utc(row["approved_at"]).isoformat()
    said = f"{analysis} {partition} approved by {row['approver']} at {when}"
    if not first:
        said = (
            f"{analysis} {partition} was already approved by {row['approver']} at {when}: "
            f"{approver}'s approval changes nothing"
        )
    counts = Counter(r.status for r in results)
    summary = (
        ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "nothing to send"
        if sender
        else "AGENT_REPORTS_SMTP_HOST is not set: the approved e-mails stay in the outbox; "
        f"materialise {email_asset(analysis).to_user_string()} once it is set to send them"
    )
    context.log.info(f"{said}; {summary}")
    context.log_event(
        AssetObservation(
            asset_key=email_asset(analysis),
            partition=partition,
            metadata={
                "approval": said,
                "approver": row["approver"],
                "approved_at": when,
                "comment": row["comment"] or "",
                "first_approval": first,
                "delivery_summary": summary,
                "deliveries": MetadataValue.json([r.as_dict() for r in results]),
            },
        )
    )
    failed = [f"{r.recipient}: {r.reason}" for r in results if not r.ok]
    if failed:
        raise Failure(
            description=f"{analysis} {partition}: {len(failed)} approved e-mail(s) failed; "
            "launch the approve job again to retry only those",
            metadata={"failures": MetadataValue.json(failed)},
        )


@job(
    name=APPROVE_JOB,
    description="A reviewer approves one window's e-mail (run config: analysis, partition, "
    "approver, comment); it is sent once. See docs/operations.md.",
)
def approve_report_job():
    approve_report()
