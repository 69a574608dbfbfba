"""Churn assets: customers → model and segments → report → email, per UTC week.

Each asset handles every partition of its run (one week in a scheduled run, a range in a
single-run backfill) and returns `{partition_key: value}`; the customer table is read
once per run. The email goes through the delivery ledger, once per week, recipient and
report content (see churn/mailing.py).
"""

from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
from dagster import AssetExecutionContext, Config, Failure, MaterializeResult, MetadataValue, asset
from pydantic import Field

from agent_reports.churn import prompts, tools
from agent_reports.churn.analysis import (
    at_risk_csv,
    churn_metrics,
    customers_as_of,
    risk_chart,
    segment_chart,
)
from agent_reports.churn.partitions import ANALYSIS, CHURN, churn_partitions
from agent_reports.core import settings
from agent_reports.core.analyst import AnalystAnswer
from agent_reports.core.charts import bar_series
from agent_reports.core.csv_files import COVERAGE_COLUMNS, coverage_note, coverage_rows
from agent_reports.core.customers import load_customers
from agent_reports.core.delivery import (
    APPROVED,
    PREVIEW_RECIPIENT,
    DeliveryKey,
    DeliveryLedger,
    EmailSender,
    Outbox,
    OutboxEntry,
    incomplete_smtp_settings,
)
from agent_reports.core.input_checks import input_failure
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
    content_fingerprint,
    deliver_report,
    hold_for_approval,
    report_email,
)
from agent_reports.core.reports import (
    Attachment,
    Chart,
    Image,
    Note,
    Report,
    Table,
    format_value,
    notes_at,
)
from agent_reports.core.resources import (
    DataSourceResource,
    DeliveryResource,
    ReportStoreResource,
)
from agent_reports.core.sources import InputError

COMMON = CHURN.asset_args()
AT_RISK_FILENAME = "at-risk-customers.csv"
REPORT_TOP_ROWS = 20


def _weeks(context: AssetExecutionContext) -> dict[str, tuple[date, date]]:
    weeks = {}
    for key in context.partition_keys:
        window = churn_partitions.time_window_for_partition_key(key)
        weeks[key] = (window.start.date(), window.end.date())
    return weeks


@asset(**COMMON, io_manager_key="range_io_manager", kinds={"pandas"})
def churn_customers(
    context: AssetExecutionContext, source: DataSourceResource
) -> dict[str, pd.DataFrame]:
    """The customer base as of each week's end: signed up before it, churned before it or
    active (SQL table, drop-folder CSVs or the demo generator)."""
    try:
        base, origin, coverage = load_customers(source.get())
        cache = coverage.pop("cache", None)  # differs run to run: kept out of the report
    except InputError as error:
        raise input_failure("customer", error) from None
    if cache:
        context.log.info(f"parsed-file cache: {cache}")
    values = {}
    for key, (_, end) in _weeks(context).items():
        frame = customers_as_of(base, end)
        frame.attrs["coverage"] = coverage
        values[key] = frame
        churned = int(frame["churned"].sum())
        context.add_asset_metadata(
            {
                "origin": origin,
                "rows_read": coverage["rows_read"],
                "rows_rejected": coverage["rows_rejected"],
                "files_not_read": len(coverage.get("ignored", [])),
                "customers": len(frame),
                "active": len(frame) - churned,
                "churned": churned,
                "blank_total_charges": int(frame["total_charges"].isna().sum()),
            },
            partition_key=key,
        )
    return values


@asset(**COMMON, io_manager_key="range_io_manager", kinds={"scikitlearn"})
def churn_analysis(
    context: AssetExecutionContext, churn_customers: dict[str, pd.DataFrame]
) -> dict[str, dict]:
    """Cross-validated churn risk of every active customer, the model's ROC AUC, churn rates
    by segment and the top at-risk customers."""
    values = {}
    for key, (start, end) in _weeks(context).items():
        customers = churn_customers[key]
        metrics = churn_metrics(customers, start, end)
        metrics["input"] = customers.attrs.get("coverage", {})
        values[key] = metrics
        risk = metrics["risk"] or {}
        context.add_asset_metadata(
            {
                "model_status": metrics["model"]["status"],
                "roc_auc": MetadataValue.float(metrics["model"]["roc_auc"] or 0.0),
                "active": metrics["customers"]["active"],
                "high_risk": risk.get("bands", {}).get("high", 0),
                "expected_churners": MetadataValue.float(risk.get("expected_churners") or 0.0),
            },
            partition_key=key,
        )
    return values


def build_churn_report(key: str, metrics: dict[str, Any], answer: AnalystAnswer) -> Report:
    model = metrics["model"]
    notes = notes_at("warning" if answer.degraded else "info", report_notes(answer))
    if model["status"] != "ok":
        notes.insert(0, Note(f"No churn model this week: {model['reason']}.", "error"))
    if metrics.get("input"):
        notes.append(Note(coverage_note(metrics["input"])))
    if not metrics["data"]["dated"]:
        notes.append(
            Note(
                "The customer source has no signup or churn dates: every week reads it as it "
                "is now.",
                "warning",
            )
        )
    narrative = answer.narrative
    images = []
    if metrics["risk"] is not None:
        images.append(Image("Churn risk of active customers", risk_chart(metrics)))
    if metrics["segments"]:
        images.append(Image("Churn rate by segment", segment_chart(metrics)))
    trend = metrics.get("trend")
    return report_from_answer(
        CHURN,
        key,
        answer,
        findings=spike_findings(trend, key)
        + narrative["findings"]
        + [_action(a) for a in narrative["actions"]],
        metrics=metrics,
        tables=_tables(metrics),
        degraded=answer.degraded or model["status"] != "ok",
        notes=notes,
        images=images,
        attachments=[Attachment(AT_RISK_FILENAME, "text/csv", at_risk_csv(metrics))],
        charts=[trend_chart(trend)] if trend else [],
        prompt_version=prompts.PROMPT_VERSION,
    )


# The reports are kept ({week: Report}) for churn_email, which attaches their CSV.
@report_asset(
    CHURN,
    prompts,
    build_churn_report,
    reads=["churn_analysis"],
    tools=lambda _key, _root, metrics: tools.tools(metrics),
    keep_reports=True,
)
def churn_report(_key: str, metrics: dict) -> dict:
    """The week's churn report: figures and charts from code, narrative and retention
    actions from the analyst (cached), the top at-risk customers as a CSV."""
    return prompts.prompt_data(metrics)


RECENT_SPIKE_WEEKS = 4


def spike_findings(trend: dict | None, key: str) -> list[dict[str, Any]]:
    """A finding from code for the latest churn spike of the last RECENT_SPIKE_WEEKS weeks
    (churn.analysis.churn_trend decides what a spike is)."""
    if not trend or not trend["spikes"]:
        return []
    recent = {w["week"] for w in trend["weeks"][-RECENT_SPIKE_WEEKS:]}
    spikes = [w for w in trend["weeks"] if w["week"] in trend["spikes"] and w["week"] in recent]
    if not spikes:
        return []
    week = spikes[-1]
    when = "this week" if week["week"] == key else f"in the week of {week['week']}"
    median = trend["median"]
    times = f"{week['churned'] / median:.1f}× " if median else ""
    return [
        {
            "title": f"Churn spike {when}: {week['churned']} customers left",
            "detail": f"{times}the median of {format_value('num', median)} a week over the "
            f"last {len(trend['weeks'])} weeks (from the customer data, not the LLM).",
            "subjects": [],
        }
    ]


def trend_chart(trend: dict) -> Chart:
    points = [(w["week"], w["churned"]) for w in trend["weeks"]]
    return bar_series("Customers who left, per week", points, set(trend["spikes"]), "left")


def _action(action: dict[str, Any]) -> dict[str, Any]:
    return {**action, "title": f"Action: {action['title']}"}


def _tables(metrics: dict[str, Any]) -> list[Table]:
    model, customers = metrics["model"], metrics["customers"]
    overview = [
        ["active customers", format_value("int", customers["active"])],
        ["churned (all time)", format_value("int", customers["churned"])],
        ["churn rate", format_value("rate", customers["churn_rate"])],
        ["churned this week", format_value("int", customers["churned_this_week"])],
        ["signed up this week", format_value("int", customers["signed_up_this_week"])],
        ["model ROC AUC (cross-validated)", model["roc_auc"]],
        ["training customers", format_value("int", model["training_rows"])],
        ["expected churners", (metrics["risk"] or {}).get("expected_churners")],
    ]
    segment_keys = ("segment", "customers", "churned", "churn_rate", "lift", "active")
    segments = [
        [column.replace("_", " "), *(r[k] for k in segment_keys), r["mean_risk_active"]]
        for column, rows in metrics["segments"].items()
        for r in rows
    ]
    top_keys = ("customer_id", "risk", "contract", "tenure", "monthly_charges", "payment_method")
    top = [[r[k] for k in top_keys] for r in metrics["top_at_risk"][:REPORT_TOP_ROWS]]
    tables = [
        Table("Overview", ["figure", "value"], overview, ["text", "num"]),
        Table(
            "Churn by segment",
            ["by", "segment", "customers", "churned", "churn rate", "lift", "active", "mean risk"],
            segments,
            ["text", "text", "int", "int", "rate", "ratio", "int", "rate"],
        ),
    ]
    if top:
        columns = ["customer", "risk", "contract", "tenure", "monthly charges", "payment method"]
        formats = ["text", "rate", "text", "int", "price", "text"]
        tables.append(Table(f"Top {len(top)} at-risk customers", columns, top, formats))
    if (metrics.get("input") or {}).get("files"):
        tables.append(Table("Input files", COVERAGE_COLUMNS[:4], coverage_rows(metrics["input"])))
    return tables


class ChurnEmailConfig(Config):
    """Run config of the email step (launchpad: ops → churn_email → config)."""

    resend: bool = Field(
        default=False,
        description="send a changed report for a week whose earlier version was already sent",
    )
    send_degraded: bool = Field(
        default=False, description="email a degraded report (LLM failed or no model) anyway"
    )
    send_attempts: int = Field(default=3, description="tries per recipient on transient errors")
    retry_backoff_seconds: float = Field(default=2.0, description="first wait; doubles each try")


RECIPIENTS_VARIABLE = "AGENT_REPORTS_CHURN_RECIPIENTS"


def recipients() -> list[str]:
    """AGENT_REPORTS_CHURN_RECIPIENTS, comma-separated, read at run time."""
    text = settings.env(RECIPIENTS_VARIABLE, "") or ""
    return sorted({address.strip() for address in text.split(",") if address.strip()})


def email_subject(report: Report) -> str:
    risk = report.metrics["risk"]
    at_risk = f": {risk['bands']['high']} customers at high risk" if risk else ""
    return f"Churn report — week of {report.partition}{at_risk}"


@asset(**COMMON, kinds={"email"})
def churn_email(
    context: AssetExecutionContext,
    config: ChurnEmailConfig,
    churn_report: dict[str, Report],
    delivery: DeliveryResource,
    reports: ReportStoreResource,
) -> MaterializeResult:
    """The week's report emailed once per recipient: re-runs send nothing, a changed report
    is withheld unless `resend: true`, a refused recipient does not stop the others. With
    no SMTP host the e-mails are written to the outbox (`reports/outbox/churn/<week>/`).
    With churn in AGENT_REPORTS_APPROVAL_REQUIRED a week's e-mails wait in the outbox for
    `approve_report_job`, and only an approved version is sent here."""
    to = recipients()
    problem = incomplete_smtp_settings(delivery.smtp_settings(), RECIPIENTS_VARIABLE, to)
    sender = delivery.email_sender()
    if sender is not None and problem:
        raise Failure(description=problem, allow_retries=False)
    weeks = list(context.partition_keys)
    if to and not problem and approval_required(ANALYSIS):  # only approved weeks go on
        weeks = _approved_weeks(context, config, churn_report, to, delivery, reports.path())
    if sender is None:  # no SMTP host: the outbox (core/delivery.py)
        root = reports.path()
        outbox = delivery.outbox(root)
        entries = [
            entry
            for key in weeks
            for entry in _outbox_week(context, config, churn_report[key], to, outbox, root)
        ]
        end_outbox_step(context, problem, entries)
        return MaterializeResult()
    if not to:
        context.log.warning(f"{RECIPIENTS_VARIABLE} is empty: no email sent")
    ledger = delivery.ledger() if to else None
    try:
        failures = [
            failure
            for key in weeks
            for failure in _email_week(context, config, churn_report[key], to, ledger, sender)
        ]
    finally:
        if ledger is not None:
            ledger.engine.dispose()
    if failures:
        raise Failure(
            description=f"{len(failures)} email(s) failed; a re-run sends only those",
            metadata={"failures": MetadataValue.json(failures[:50])},
        )
    return MaterializeResult()


def _approved_weeks(
    context: AssetExecutionContext,
    config: ChurnEmailConfig,
    reports_by_week: dict[str, Report],
    to: list[str],
    delivery: DeliveryResource,
    root: Path,
) -> list[str]:
    """Under approval, each week's e-mails are written to the outbox as their preview and
    recorded as awaiting approval; returns the weeks whose version is approved (and a held
    degraded report's week, which the send path records as held)."""
    outbox, ledger, weeks = delivery.outbox(root), delivery.ledger(), []
    try:
        for key in context.partition_keys:
            report = reports_by_week[key]
            if report.degraded and not config.send_degraded:
                weeks.append(key)
                continue
            fingerprint = content_fingerprint(report)
            row, entries = hold_for_approval(
                ledger,
                outbox,
                [DeliveryKey(ANALYSIS, key, address, fingerprint) for address in to],
                lambda k, r=report: report_email(outbox, r, email_subject(r), k),
            )
            metadata = {"content_fingerprint": fingerprint, "recipients": len(to)}
            metadata |= approval_metadata(row, entries, root)
            context.add_asset_metadata(metadata, partition_key=key)
            if row["status"] == APPROVED:
                weeks.append(key)
    finally:
        ledger.engine.dispose()
    return weeks


def _outbox_week(
    context: AssetExecutionContext,
    config: ChurnEmailConfig,
    report: Report,
    to: list[str],
    outbox: Outbox,
    root: Path,
) -> list[OutboxEntry]:
    """Write one week's e-mails to the outbox (a preview when no recipients are set)."""
    if report.degraded and not config.send_degraded:
        return []
    fingerprint = content_fingerprint(report)
    keys = [
        DeliveryKey(ANALYSIS, report.partition, a, fingerprint) for a in to or [PREVIEW_RECIPIENT]
    ]
    entries = [
        outbox.write(report_email(outbox, report, email_subject(report), k), k) for k in keys
    ]
    context.add_asset_metadata(
        {
            "content_fingerprint": fingerprint,
            "recipients": len(to),
            **outbox_metadata(entries, root),
        },
        partition_key=report.partition,
    )
    return entries


def _email_week(
    context: AssetExecutionContext,
    config: ChurnEmailConfig,
    report: Report,
    to: list[str],
    ledger: DeliveryLedger | None,
    sender: EmailSender | None,
) -> list[str]:
    """Deliver one week's report to every recipient; record what happened; return failures."""
    key = report.partition
    fingerprint = content_fingerprint(report)
    held = report.degraded and not config.send_degraded
    results = []
    if to and not held:
        results = deliver_report(
            ledger,
            sender,
            [DeliveryKey(ANALYSIS, key, address, fingerprint) for address in to],
            lambda k: report_email(sender, report, email_subject(report), k),
            resend=config.resend,
            attempts=config.send_attempts,
            backoff_seconds=config.retry_backoff_seconds,
        )
    counts = Counter(r.status for r in results)
    context.add_asset_metadata(
        {
            "content_fingerprint": fingerprint,
            "recipients": len(to),
            "held_degraded": held and bool(to),
            "deliveries": MetadataValue.json([r.as_dict() for r in results]),
            "delivery_summary": ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
            or "nothing to send",
        },
        partition_key=key,
    )
    return [f"{key} → {r.recipient}: {r.reason}" for r in results if not r.ok]
