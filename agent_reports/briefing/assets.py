"""Briefing assets: report files as of 09:00 New York → briefing → email, per weekday.

The briefing reads the other analyses' report files, not their assets: its New York
weekday partitions do not map one-to-one onto UTC days, hours and weeks, and the file a
schedule delivered is exactly what the team would have seen at 09:00.

It still declares those reports as dependencies, so the lineage graph shows them and a
newer report marks the briefing stale. The mapping is "the latest partition": Dagster's
TimeWindowPartitionMapping refuses partitions in different time zones ("Timezones UTC and
America/New_York don't match"), and which report a briefing reads is decided by
`briefing_inputs` (what was delivered by 09:00), not by the mapping.
"""

import json
from datetime import UTC, datetime
from pathlib import Path

from dagster import (
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    Failure,
    LastPartitionMapping,
    MaterializeResult,
    MetadataValue,
    asset,
)

from agent_reports.briefing import prompts, tools
from agent_reports.briefing.analysis import briefing_inputs, missing_sources
from agent_reports.briefing.partitions import ANALYSIS, BRIEFING, as_of
from agent_reports.core import settings
from agent_reports.core.analyst import AnalystAnswer
from agent_reports.core.delivery import (
    APPROVED,
    PREVIEW_RECIPIENT,
    DeliveryKey,
    Message,
    Outbox,
    incomplete_smtp_settings,
)
from agent_reports.core.publishing import (
    end_outbox_step,
    outbox_metadata,
    report_asset,
    report_from_answer,
    report_notes,
)
from agent_reports.core.report_email import (
    approval_metadata,
    approval_required,
    hold_for_approval,
)
from agent_reports.core.reports import Note, Report, Table, notes_at
from agent_reports.core.resources import DeliveryResource, ReportStoreResource

COMMON = BRIEFING.asset_args()
# The ledger's fingerprint for a briefing: constant, so each (day, recipient) gets one
# email, ever, even if a re-run reads a report that arrived after 09:00.
EMAIL_FINGERPRINT = "briefing-email-v1"
RECIPIENTS_VARIABLE = "AGENT_REPORTS_BRIEFING_RECIPIENTS"
# The reports a briefing reads (briefing_inputs), as lineage.
SOURCE_REPORTS = [
    AssetDep(AssetKey(f"{source}_report"), partition_mapping=LastPartitionMapping())
    for source in ("market", "anomalies", "churn")
]


def build_briefing(key: str, inputs: dict, answer: AnalystAnswer) -> Report:
    missing = missing_sources(inputs)
    as_of = datetime.fromisoformat(inputs["as_of"])
    utc = as_of.astimezone(UTC)
    notes = [Note(f"As of {as_of:%Y-%m-%d %H:%M} New York time ({utc:%Y-%m-%d %H:%M} UTC).")]
    if missing:
        text = "Not available at 09:00 New York time: " + ", ".join(missing) + "."
        notes.append(Note(text, "warning"))
    notes += notes_at("warning" if answer.degraded else "info", report_notes(answer))
    sources = [
        [
            name,
            src["partition"],
            _utc(src["window_end"]),
            src["degraded"],
            src["input_fingerprint"][:16],
        ]
        for name in ("market", "churn")
        if (src := inputs[name]) is not None
    ]
    anomalies = inputs["anomalies"]
    worst = [[h["hour"], h["severity"], h["summary"]] for h in anomalies["worst_hours"]]
    return report_from_answer(
        BRIEFING,
        key,
        answer,
        findings=answer.narrative["findings"],
        metrics={**inputs, "missing": missing},
        tables=[
            Table("Sources", ["source", "window", "ends (UTC)", "degraded", "inputs"], sources),
            Table("Worst anomaly hours (UTC)", ["hour", "severity", "summary"], worst),
        ],
        notes=notes,
        prompt_version=prompts.PROMPT_VERSION,
    )


def _sources(key: str, root: Path) -> dict:
    """The reports a briefing reads: those delivered by 09:00 New York on its day."""
    return briefing_inputs(root, as_of(key))


@report_asset(
    BRIEFING,
    prompts,
    build_briefing,
    gather=_sources,
    tools=lambda key, root: tools.tools(root, as_of(key)),
    deps=SOURCE_REPORTS,
)
def briefing_report(_key: str, found: dict) -> dict:
    """The day's briefing: the reports delivered by 09:00 New York, summarised (cached)."""
    return prompts.prompt_data(found, missing_sources(found))


def _utc(text: str) -> str:
    """An ISO time as `2024-03-05 00:00` in UTC (the sources' windows are UTC)."""
    return f"{datetime.fromisoformat(text).astimezone(UTC):%Y-%m-%d %H:%M}"


def recipients() -> list[str]:
    """AGENT_REPORTS_BRIEFING_RECIPIENTS: comma-separated addresses, read at run time."""
    value = settings.env(RECIPIENTS_VARIABLE, "") or ""
    return [address.strip() for address in value.split(",") if address.strip()]


@asset(**COMMON, deps=[briefing_report])
def briefing_email(
    context: AssetExecutionContext, delivery: DeliveryResource, reports: ReportStoreResource
) -> MaterializeResult:
    """Emails the day's briefing once per recipient, through the delivery ledger; with no
    SMTP host it is written to the outbox (`reports/outbox/briefing/<day>/`) instead.

    A range run (a backfill) rewrites old briefings but does not email them: nobody wants
    a month of mornings at once. With briefing in AGENT_REPORTS_APPROVAL_REQUIRED the
    day's e-mails wait in the outbox for `approve_report_job`; only then are they sent.
    """
    if len(context.partition_keys) > 1:
        context.log.info(f"range run of {len(context.partition_keys)} days: no email sent")
        return MaterializeResult(metadata={"emailed": False})
    to, key, root = recipients(), context.partition_key, reports.path()
    problem = incomplete_smtp_settings(delivery.smtp_settings(), RECIPIENTS_VARIABLE, to)
    sender = delivery.email_sender()
    if sender is not None and problem:
        raise Failure(description=problem, allow_retries=False)
    if sender is not None and not to:
        context.log.warning(f"{RECIPIENTS_VARIABLE} is empty: briefing not emailed")
        return MaterializeResult(metadata={"emailed": False})
    record = json.loads((root / ANALYSIS / f"{key}.json").read_text())
    report = Report(**record)
    message = Message(
        subject=f"[agent_reports] Morning briefing — {key}",
        text=report.to_markdown(),
        html=report.to_html(),
        payload={"analysis": ANALYSIS, "partition": key, "summary": report.summary},
    )
    approval = {}
    if to and not problem and approval_required(ANALYSIS):  # only approved ones go on
        approval = _hold(delivery, message, to, key, root)
        if approval.pop("status") != APPROVED:
            return MaterializeResult(metadata={"emailed": False, **approval})
    if sender is None:
        return _to_outbox(context, delivery.outbox(root), message, to, problem, root)
    outcomes = delivery.notifier(webhook=False).notify(
        ANALYSIS, key, EMAIL_FINGERPRINT, message, to
    )
    failed = [f"{o.key.recipient}: {o.reason}" for o in outcomes if not o.ok]
    statuses = [{"recipient": o.key.recipient, "status": o.status} for o in outcomes]
    if failed:
        raise Failure(
            description=f"{len(failed)} briefing email(s) failed; a re-run sends only those",
            metadata={"failures": MetadataValue.json(failed)},
        )
    return MaterializeResult(
        metadata={"emailed": True, "deliveries": MetadataValue.json(statuses), **approval}
    )


def _hold(
    delivery: DeliveryResource, message: Message, to: list[str], key: str, root: Path
) -> dict:
    """Write the day's e-mails to the outbox as their preview and record them as awaiting
    approval (ops/approval.py); the approval's status and metadata."""
    outbox, ledger = delivery.outbox(root), delivery.ledger()
    try:
        row, entries = hold_for_approval(
            ledger,
            outbox,
            [DeliveryKey(ANALYSIS, key, address, EMAIL_FINGERPRINT) for address in to],
            lambda k: outbox.build(message, k),
        )
    finally:
        ledger.engine.dispose()
    return {"status": row["status"], **approval_metadata(row, entries, root)}


def _to_outbox(
    context: AssetExecutionContext,
    outbox: Outbox,
    message: Message,
    to: list[str],
    problem: str | None,
    root: Path,
) -> MaterializeResult:
    """No SMTP host: the e-mails are written to the outbox, not sent. Recipients without a
    host is a half-way configuration: the files are written, then the step fails naming
    the missing variable."""
    key = context.partition_key
    keys = [DeliveryKey(ANALYSIS, key, to_, EMAIL_FINGERPRINT) for to_ in to or [PREVIEW_RECIPIENT]]
    entries = [outbox.write(outbox.build(message, k), k) for k in keys]
    end_outbox_step(context, problem, entries)
    return MaterializeResult(metadata={"emailed": False, **outbox_metadata(entries, root)})
