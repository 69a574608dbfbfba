"""Alerts that nobody has to remember to switch on: a stale analysis, a failed run.

Both go through the notifier and its ledger, keyed so that one incident gives one
alert however often a sensor is evaluated (daemon restarts re-evaluate): a stale
analysis by (asset, last update or missed deadline), a failed run by its run id.

Ops alerts have their own recipients (AGENT_REPORTS_OPS_EMAIL_TO) and webhook
(AGENT_REPORTS_OPS_WEBHOOK_URL, _TOKEN), apart from the anomaly alerts and report emails:
platform engineers, not analysts, act on them. Both sensors start RUNNING, since an
alert that must first be switched on is missing exactly when it is needed.
"""

from datetime import UTC, datetime

from dagster import (
    DefaultSensorStatus,
    EnvVar,
    RunFailureSensorContext,
    SensorEvaluationContext,
    SkipReason,
    run_failure_sensor,
    sensor,
)

from agent_reports.core import settings
from agent_reports.core.delivery import DeliveryOutcome, Message, Notifier, WebhookSender
from agent_reports.core.resources import DeliveryResource
from agent_reports.ops import ClockResource
from agent_reports.ops.freshness import FRESHNESS, freshness_state

FRESHNESS_REPORT = "ops-freshness"
RUN_FAILURE_REPORT = "ops-run-failure"
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


@sensor(
    name="freshness_alert_sensor",
    minimum_interval_seconds=120,
    default_status=DefaultSensorStatus.RUNNING,
    description="Alerts once per incident when an analysis' report goes stale.",
)
def freshness_alert_sensor(
    context: SensorEvaluationContext, clock: ClockResource, delivery: DeliveryResource
):
    now = clock.now()
    present = set(context.repository_def.assets_defs_by_key) if context.repository_def else None
    lines = []
    for key, policy in FRESHNESS.items():
        if present is not None and key not in present:
            continue
        event = context.instance.get_latest_materialization_event(key)
        last = datetime.fromtimestamp(event.timestamp, UTC) if event else None
        state = freshness_state(policy, last, now)
        if state.state != "FAIL":
            continue
        name = key.to_user_string()
        message = Message(
            subject=f"[agent_reports] {name} is stale",
            text=f"{name} is stale as of {now.isoformat()}: {state.detail}.\n"
            "Check its schedule, the catch-up sensor and recent run failures.\n",
            payload={
                "alert": "stale",
                "asset": name,
                "detail": state.detail,
                "incident": state.incident,
                "evaluated_at": now.isoformat(),
            },
        )
        outcomes = _send(delivery, name, FRESHNESS_REPORT, state.incident or "", message)
        lines.append(f"{name}: {state.detail} → {_summary(outcomes)}")
    if not lines:
        return SkipReason(f"every analysis is fresh as of {now.isoformat()}")
    context.log.warning("; ".join(lines))
    return SkipReason("stale: " + "; ".join(lines))


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
