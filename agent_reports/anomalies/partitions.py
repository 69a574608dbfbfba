"""The anomaly scan, declared once: one UTC hour per partition, run at :05 for the hour
before; its report is due 2 hours after the hour ends. Windows whose access logs grow
after their report are listed (and re-run on request) by the late-lines sensor."""

from datetime import timedelta

from dagster import HourlyPartitionsDefinition

from agent_reports.core.declaration import Analysis, Deadline, Schedule

ANOMALIES = Analysis(
    name="anomalies",
    partitions=HourlyPartitionsDefinition(start_date="2024-01-01-00:00", timezone="UTC"),
    schedule=Schedule(
        minute=5,
        description="Every hour at :05 UTC: the hour that just ended (run_key = the hour).",
    ),
    lag=timedelta(minutes=5),
    pool="anomalies",
    deadline=Deadline(after_end=timedelta(hours=2)),
    late_lines=True,
    owner="team:platform",
    cadence="hourly",
    description="Access logs → hourly features → anomalies → report → alert, per UTC hour.",
    package=__package__,
)

# The names the folder's assets, checks and tests use.
ANALYSIS, POOL, anomalies_partitions = ANOMALIES.name, ANOMALIES.pool, ANOMALIES.partitions
