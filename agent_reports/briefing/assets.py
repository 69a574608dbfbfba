"""Briefing assets: report files as of 09:00 New York → briefing → email, per weekday.

The briefing reads the other analyses' report files, not their assets: its New York
weekday partitions do not map one-to-one onto UTC days, hours and weeks, and the file a
schedule delivered is exactly what the team would have seen at 09:00.
"""

import json

from dagster import (
    AssetExecutionContext,
    BackfillPolicy,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from agent_reports.briefing import prompts
from agent_reports.briefing.analysis import briefing_inputs, missing_sources
from agent_reports.briefing.partitions import ANALYSIS, POOL, as_of, briefing_partitions
from agent_reports.core import settings
from agent_reports.core.analyst import AnalystAnswer, AnalystRequest
from agent_reports.core.delivery import Message
from agent_reports.core.publishing import (
    publish_reports,
    report_from_answer,
    report_notes,
)
from agent_reports.core.reports import Report, Table
from agent_reports.core.resources import AnalystResource, DeliveryResource, ReportStoreResource

COMMON = {
    "group_name": ANALYSIS,
    "partitions_def": briefing_partitions,
    "pool": POOL,
    "backfill_policy": BackfillPolicy.single_run(),
}
# The ledger's fingerprint for a briefing: constant, so each (day, recipient) gets one
# email, ever, even if a re-run reads a report that arrived after 09:00.
EMAIL_FINGERPRINT = "briefing-email-v1"


@asset(**COMMON)
def briefing_report(
    context: AssetExecutionContext, analyst: AnalystResource, reports: ReportStoreResource
) -> MaterializeResult:
    """The day's briefing: the reports delivered by 09:00 New York, summarised (cached)."""
    root = reports.path()
    inputs = {key: briefing_inputs(root, as_of(key)) for key in context.partition_keys}
    requests = {
        key: AnalystRequest.from_prompts(
            ANALYSIS, prompts, prompts.prompt_data(found, missing_sources(found))
        )
        for key, found in inputs.items()
    }
    written = publish_reports(
        context,
        analyst,
        root,
        requests,
        lambda key, answer: build_briefing(key, inputs[key], answer),
    )
    return MaterializeResult(metadata={"reports_written": MetadataValue.int(len(written))})


def build_briefing(key: str, inputs: dict, answer: AnalystAnswer) -> Report:
    window = briefing_partitions.time_window_for_partition_key(key)
    missing = missing_sources(inputs)
    notes = [f"As of {inputs['as_of']} (09:00 New York)."]
    if missing:
        notes.append("Not available at 09:00: " + ", ".join(missing) + ".")
    notes += report_notes(answer)
    sources = [
        [name, src["partition"], src["window_end"], src["degraded"], src["input_fingerprint"][:16]]
        for name in ("market", "churn")
        if (src := inputs[name]) is not None
    ]
    anomalies = inputs["anomalies"]
    worst = [[h["hour"], h["severity"], h["summary"]] for h in anomalies["worst_hours"]]
    return report_from_answer(
        ANALYSIS,
        key,
        window,
        answer,
        prompts.PROMPT_VERSION,
        findings=answer.narrative["findings"],
        metrics={**inputs, "missing": missing},
        tables=[
            table
            for table in (
                Table("Sources", ["source", "window", "ends", "degraded", "inputs"], sources),
                Table("Worst anomaly hours (UTC)", ["hour", "severity", "summary"], worst),
            )
            if table.rows
        ],
        notes=notes,
    )


def recipients() -> list[str]:
    """AGENT_REPORTS_BRIEFING_RECIPIENTS: comma-separated addresses, read at run time."""
    value = settings.env("AGENT_REPORTS_BRIEFING_RECIPIENTS", "") or ""
    return [address.strip() for address in value.split(",") if address.strip()]


@asset(**COMMON, deps=[briefing_report])
def briefing_email(
    context: AssetExecutionContext, delivery: DeliveryResource, reports: ReportStoreResource
) -> MaterializeResult:
    """Emails the day's briefing once per recipient, through the delivery ledger.

    A range run (a backfill) rewrites old briefings but does not email them: nobody wants
    a month of mornings at once.
    """
    if len(context.partition_keys) > 1:
        context.log.info(f"range run of {len(context.partition_keys)} days: no email sent")
        return MaterializeResult(metadata={"emailed": False})
    to = recipients()
    key = context.partition_key
    if not to:
        context.log.warning("AGENT_REPORTS_BRIEFING_RECIPIENTS is empty: briefing not emailed")
        return MaterializeResult(metadata={"emailed": False})
    record = json.loads((reports.path() / ANALYSIS / f"{key}.json").read_text())
    report = Report(**record)
    message = Message(
        subject=f"[agent_reports] Morning briefing — {key}",
        text=report.to_markdown(),
        html=report.to_html(),
        payload={"analysis": ANALYSIS, "partition": key, "summary": report.summary},
    )
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
    return MaterializeResult(metadata={"emailed": True, "deliveries": MetadataValue.json(statuses)})
