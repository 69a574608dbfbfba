"""The compliance audit, declared once: one UTC calendar month per partition, run at 00:00
UTC on the 1st for the month just ended. It audits every other declared analysis, not
itself; its own report is due 32 days after the month ends."""

from datetime import timedelta

from dagster import MonthlyPartitionsDefinition

from agent_reports.core.declaration import Analysis, Deadline, Schedule

COMPLIANCE = Analysis(
    name="compliance",
    partitions=MonthlyPartitionsDefinition(start_date="2024-01-01", timezone="UTC"),
    schedule=Schedule(
        day_of_month=1,
        hour=0,
        description="The 1st of each month at 00:00 UTC: the audit of the month that just ended.",
    ),
    lag=timedelta(0),
    pool="compliance",
    deadline=Deadline(after_end=timedelta(days=32)),
    audited=False,
    late_lines=True,
    owner="team:compliance",
    cadence="monthly",
    description="Run history, deliveries and access logs → audit report, per UTC month.",
    package=__package__,
)

# The names the folder's assets, checks and tests use.
ANALYSIS, POOL, compliance_partitions = COMPLIANCE.name, COMPLIANCE.pool, COMPLIANCE.partitions
