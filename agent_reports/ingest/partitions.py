"""The access-log store's ingest, declared once: the anomaly scan's UTC hours, run at :02.

Not an analysis: no pool (the store's file lock keeps two ingests apart), no deadline (so
no freshness policy, alert or audit row) and no catch-up (the next ingest reads whatever
a missed one would have).
"""

from datetime import timedelta

from agent_reports.anomalies.partitions import anomalies_partitions
from agent_reports.core.declaration import Analysis, Schedule

INGEST = Analysis(
    name="ingest",
    partitions=anomalies_partitions,
    schedule=Schedule(
        minute=2, description="Every hour at :02 UTC: new access-log lines into the log store."
    ),
    lag=timedelta(minutes=2),
    catchup=False,
    owner="team:platform",
    cadence="hourly",
    description="New access-log lines into the log store; each hour's lines, bytes, files.",
    package=__package__,
    report="access_log_store",
)

GROUP = INGEST.name
