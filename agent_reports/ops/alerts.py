"""Alerts that nobody has to remember to switch on: a stale analysis, a failed run, an
e-mail still awaiting approval past its report's deadline.

All go through the notifier and its ledger, keyed so that one incident gives one
alert however often a sensor is evaluated (daemon restarts re-evaluate): a stale
analysis by (report asset, the missing window's partition key), a failed run by its run
id, an overdue approval by (e-mail asset, partition).

Ops alerts have their own recipients (AGENT_REPORTS_OPS_EMAIL_TO) and webhook
(AGENT_REPORTS_OPS_WEBHOOK_URL, _TOKEN), apart from the anomaly alerts and report emails:
platform engineers, not analysts, act on them. The sensors start RUNNING, since an
alert that must first be switched on is missing exactly when it is needed.
"""

from datetime import UTC, datetime

from dagster import (
    DefaultSensorStatus,
    EnvVar,
    RunFailureSensorContext,
    ScheduleDefinition,
    SensorEvaluationContext,
    SkipReason,
    run_failure_sensor,
    sensor,
)

from agent_reports.core import settings
from agent_reports.core.declaration import DeclaredReport, declared_reports
from agent_reports.core.delivery import (
    AWAITING,
    DeliveryOutcome,
    Message,
    Notifier,
    WebhookSender,
)
from agent_reports.core.report_email import APPROVE_JOB, as_utc
from agent_reports.core.resources import DeliveryResource
from agent_reports.ops import ClockResource
from agent_reports.ops.approval import email_asset, window_deadline
from agent_reports.ops.catchup import schedule_is_running
from agent_reports.ops.freshness import DueWindow, has_report, newest_due_window, report_key

FRESHNESS_REPORT = "ops-freshness"
RUN_FAILURE_REPORT = "ops-run-failure"
APPROVAL_REPORT = "ops-approval-overdue"
MAX_ERROR_CHARS = 2000


def ops_recipients() -> list[str]:
    value = settings.env("AGENT_REPORTS_OPS_EMAIL_TO", "") or ""
    return [address.strip() for address in value.split(",") if address.strip()]


def ops_notifier(delivery: DeliveryResource) -> Notifier:
    """The shared ledger and SMTP settings, with the ops webhook (if any)."""
    url = EnvVar("AGENT_REPORTS_OPS_WEBHOOK_URL").get_value()
    token = EnvVar("AGENT_REPORTS_OPS_WEBHOOK_TOKEN").get_value()
    webhook = WebhookSender(url, token or None) if url else None
    return Notifier(delivery.ledger(), delivery.email_sender(), webhook)


def _send(
    delivery: DeliveryResource, partition: str, report: str, incident: str, message: Message
) -> list[DeliveryOutcome] | None:
    """Send through the ledger; None when no ops channel is configured."""
    notifier = ops_notifier(delivery)
    to = ops_recipients()
    if not to and notifier.webhook is None:
        return None
    return notifier.notify(report, partition, incident, message, to)


def _summary(outcomes: list[DeliveryOutcome] | None) -> str:
    if outcomes is None:
        return "no ops channel configured (AGENT_REPORTS_OPS_EMAIL_TO / _WEBHOOK_URL)"
    return ", ".join(f"{o.status}" + (f" ({o.reason})" if o.reason else "") for o in outcomes)


def watched(context: SensorEvaluationContext) -> list[tuple[DeclaredReport, ScheduleDefinition]]:
    """Each declared analysis of this code location with a deadline (core/declaration.py),
    and the schedule that runs its job."""
    repository = context.repository_def
    if repository is None:
        return []
    schedules = {schedule.job_name: schedule for schedule in repository.schedule_defs}
    return [
        (declared, schedules[declared.job_name])
        for declared in declared_reports(repository)
        if declared.job_name in schedules
    ]


def stale_message(window: DueWindow, now: datetime) -> Message:
    """The alert for one window without its report past its deadline."""
    name = report_key(window.analysis).to_user_string()
    deadline = window.deadline.astimezone(UTC).isoformat()
    detail = f"no report for window {window.key} (due {deadline})"
    return Message(
        subject=f"[agent_reports] {window.analysis} is stale: window {window.key} missing",
        text=f"{name} is stale as of {now.isoformat()}: {detail}.\n"
        "Check its schedule, the catch-up sensor and recent run failures.\n",
        payload={
            "alert": "stale",
            "analysis": window.analysis,
            "asset": name,
            "window": window.key,
            "deadline": deadline,
            "detail": detail,
            "incident": window.key,
            "evaluated_at": now.isoformat(),
        },
    )


@sensor(
    name="freshness_alert_sensor",
    minimum_interval_seconds=120,
    default_status=DefaultSensorStatus.RUNNING,
    description="Alerts once per window when an analysis' newest due window has no report "
    "(while its schedule is on).",
)
def freshness_alert_sensor(
    context: SensorEvaluationContext, clock: ClockResource, delivery: DeliveryResource
):
    """For each analysis whose schedule is on, the newest window past its deadline must
    have its own report; if not, one alert per (analysis, window) through the ledger.

    A stopped schedule means the analysis is paused (as for the catch-up sensor): its
    windows are not judged, else a paused hourly analysis would alert every hour. The UI's
    freshness policy still shows it overdue.
    """
    now = clock.now()
    lines, paused = [], []
    for declared, schedule in watched(context):
        analysis = declared.analysis
        if not schedule_is_running(context, schedule):
            paused.append(analysis)
            continue
        window = newest_due_window(analysis, declared.partitions_def, now, declared.deadline)
        if window is None or has_report(context.instance, window, now):
            continue
        message = stale_message(window, now)
        name = declared.report_key.to_user_string()
        outcomes = _send(delivery, name, FRESHNESS_REPORT, window.key, message)
        lines.append(f"{analysis} {window.key}: {message.payload['detail']} → {_summary(outcomes)}")
    note = f" (paused, not judged: {', '.join(paused)})" if paused else ""
    if not lines:
        return SkipReason(f"no due window is missing as of {now.isoformat()}{note}")
    context.log.warning("; ".join(lines))
    return SkipReason("stale: " + "; ".join(lines) + note)


@run_failure_sensor(
    name="run_failure_alert_sensor",
    default_status=DefaultSensorStatus.RUNNING,
    description="Alerts once per failed run of this code location.",
)
def run_failure_alert_sensor(context: RunFailureSensorContext, delivery: DeliveryResource):
    run = context.dagster_run
    partition = run.tags.get("dagster/partition") or "-".join(
        filter(
            None,
            (
                run.tags.get("dagster/asset_partition_range_start"),
                run.tags.get("dagster/asset_partition_range_end"),
            ),
        )
    )
    errors = [
        event.step_failure_data.error.message.strip()
        for event in context.get_step_failure_events()
        if event.step_failure_data and event.step_failure_data.error
    ]
    error = "\n".join(errors) or (context.failure_event.message or "")
    subject = f"[agent_reports] run failed: {run.job_name}" + (f" {partition}" if partition else "")
    message = Message(
        subject=subject,
        text=f"{subject}\nRun {run.run_id}\n\n{error[:MAX_ERROR_CHARS]}\n",
        payload={
            "alert": "run_failure",
            "job": run.job_name,
            "run_id": run.run_id,
            "partition": partition or None,
            "error": error[:MAX_ERROR_CHARS],
        },
    )
    outcomes = _send(delivery, run.run_id, RUN_FAILURE_REPORT, "failed", message)
    context.log.info(f"run {run.run_id} failed: alert {_summary(outcomes)}")


def overdue_message(row: dict, due: datetime, now: datetime) -> Message:
    """The alert for one window whose e-mail still awaits approval past its deadline."""
    analysis, partition = row["report"], row["partition"]
    since = as_utc(row["requested_at"]).isoformat()
    detail = (
        f"the {analysis} e-mail for {partition} awaits approval since {since}; "
        f"its report was due {due.astimezone(UTC).isoformat()}"
    )
    return Message(
        subject=f"[agent_reports] {analysis} {partition} awaits approval past its deadline",
        text=f"{detail}.\nRead its preview on {email_asset(analysis).to_user_string()} and "
        f"launch {APPROVE_JOB} to send it (docs/operations.md).\n",
        payload={
            "alert": "approval_overdue",
            "analysis": analysis,
            "window": partition,
            "deadline": due.astimezone(UTC).isoformat(),
            "awaiting_since": since,
            "detail": detail,
            "incident": partition,
            "evaluated_at": now.isoformat(),
        },
    )


@sensor(
    name="approval_overdue_alert_sensor",
    minimum_interval_seconds=120,
    default_status=DefaultSensorStatus.RUNNING,
    description="Alerts once per window when a report's e-mail still awaits approval past "
    "the report's deadline (AGENT_REPORTS_APPROVAL_REQUIRED).",
)
def approval_overdue_alert_sensor(
    context: SensorEvaluationContext, clock: ClockResource, delivery: DeliveryResource
):
    """Judged at the clock's instant; one alert per (e-mail asset, window) through the
    ledger, whatever the number of evaluations, versions or approvals that follow."""
    now = clock.now()
    ledger = delivery.ledger()
    try:
        waiting = ledger.approval_rows(AWAITING)
    finally:
        ledger.engine.dispose()
    lines = []
    for row in waiting:
        due = window_deadline(row["report"], row["partition"])
        if now < due:
            continue
        message = overdue_message(row, due, now)
        name = email_asset(row["report"]).to_user_string()
        outcomes = _send(delivery, name, APPROVAL_REPORT, row["partition"], message)
        lines.append(f"{name} {row['partition']}: {_summary(outcomes)}")
    if not lines:
        return SkipReason(f"{len(waiting)} awaiting approval, none overdue at {now.isoformat()}")
    context.log.warning("approval overdue: " + "; ".join(lines))
    return SkipReason("approval overdue: " + "; ".join(lines))
