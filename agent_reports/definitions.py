"""The one entry point: the declared analyses (each folder's analysis.yaml) built into
their assets, checks, jobs, schedules and catch-up sensors (core/declaration.py), plus the
sensors that watch them all and the shared resources. Cross-cutting policy (pools, the
run queue, retries) lives in dagster.yaml; each analysis declares its own pool.
To add an analysis: a folder like market/ and one line in ANALYSES."""

from __future__ import annotations

from dagster import Definitions, in_process_executor

from agent_reports.anomalies.partitions import ANOMALIES
from agent_reports.briefing.partitions import BRIEFING
from agent_reports.churn.partitions import CHURN
from agent_reports.compliance.partitions import COMPLIANCE
from agent_reports.components import declared_definitions
from agent_reports.core.catalog import catalog_spec
from agent_reports.core.declaration import analysis_definitions, with_declared
from agent_reports.core.resources import (
    AnalystResource,
    DataSourceResource,
    DeliveryResource,
    PartitionRangeIOManager,
    ReportStoreResource,
)
from agent_reports.core.run_lock import with_run_locks
from agent_reports.ingest.partitions import INGEST
from agent_reports.market.partitions import MARKET
from agent_reports.ops import ClockResource
from agent_reports.ops.alerts import (
    approval_overdue_alert_sensor,
    freshness_alert_sensor,
    run_failure_alert_sensor,
)
from agent_reports.ops.approval import approve_report_job
from agent_reports.ops.catchup import build_late_lines_sensor
from agent_reports.ops.pings import run_ping_sensor

ANALYSES = [MARKET, ANOMALIES, CHURN, COMPLIANCE, BRIEFING, INGEST]
# Jobs and sensors that serve every analysis rather than one.
OPS_JOBS = [approve_report_job]
OPS_SENSORS = [
    # Windows whose access logs grew after their report (core/log_store.py).
    build_late_lines_sensor(
        [analysis.catchup_spec() for analysis in ANALYSES if analysis.late_lines]
    ),
    freshness_alert_sensor,
    run_failure_alert_sensor,
    approval_overdue_alert_sensor,
    run_ping_sensor,
]

RESOURCES = {
    "source": DataSourceResource(),
    "analyst": AnalystResource(),
    "reports": ReportStoreResource(),
    "range_io_manager": PartitionRangeIOManager(),
    "delivery": DeliveryResource(),
    "clock": ClockResource(),
}

defs = Definitions.merge(
    *(analysis_definitions(analysis) for analysis in ANALYSES),
    declared_definitions(),  # the analyses declared in YAML: agent_reports/defs/<name>/
    Definitions(
        jobs=OPS_JOBS,
        sensors=OPS_SENSORS,
        # One process per run, not one per step: the multiprocess default starts 5-7
        # processes per run, each importing the code location again (4-9 s apiece on this
        # machine), which made orchestration, not the data, the cost of a run. A crashed run
        # is retried whole (dagster.yaml run_retries); the steps of an analysis are sequential.
        executor=in_process_executor,
        resources=RESOURCES,
    ),
).map_resolved_asset_specs(func=catalog_spec)
# The declared reports as a resource for the audit, and each run holding its analysis' run
# lock from before its first step to after its last, on every launch path
# (agent_reports/core/run_lock.py): the second guard behind the pools.
defs = with_run_locks(with_declared(defs))
