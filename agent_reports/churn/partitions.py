"""The churn report, declared once: one UTC week (Monday start) per partition, run Monday
07:00 UTC for the week just ended, emailed to AGENT_REPORTS_CHURN_RECIPIENTS; due 8 days
after the week ends."""

from datetime import timedelta

from dagster import WeeklyPartitionsDefinition

from agent_reports.core.declaration import Analysis, Deadline, Schedule

CHURN = Analysis(
    name="churn",
    # 2024-01-01 is a Monday.
    partitions=WeeklyPartitionsDefinition(start_date="2024-01-01", day_offset=1, timezone="UTC"),
    schedule=Schedule(
        day_of_week=1,
        hour=7,
        description="Mondays at 07:00 UTC: the week (Monday to Sunday) that just ended.",
    ),
    lag=timedelta(hours=7),
    pool="churn",
    deadline=Deadline(after_end=timedelta(days=8)),
    recipients_variable="AGENT_REPORTS_CHURN_RECIPIENTS",
    owner="team:customer-success",
    cadence="weekly",
    description="Customers → model and segments → report → email, for one UTC week.",
    package=__package__,
)

# The names the folder's assets, checks and tests use.
ANALYSIS, POOL, churn_partitions = CHURN.name, CHURN.pool, CHURN.partitions
