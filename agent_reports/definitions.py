"""The one entry point: every analysis' assets, checks, jobs and schedules, and the shared
resources, assembled once. Cross-cutting policy (pools, the run queue, retries) lives in
dagster.yaml; each analysis declares its own pool on its assets."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from dagster import (
    AnchorBasedFilePathMapping,
    AssetSpec,
    Definitions,
    TableColumn,
    TableSchema,
    in_process_executor,
    link_code_references_to_git,
    load_asset_checks_from_modules,
    load_assets_from_modules,
    with_source_code_references,
)

from agent_reports.anomalies import assets as anomalies_assets
from agent_reports.anomalies import checks as anomalies_checks
from agent_reports.anomalies.partitions import anomalies_job, anomalies_schedule
from agent_reports.briefing import assets as briefing_assets
from agent_reports.briefing import checks as briefing_checks
from agent_reports.briefing.partitions import briefing_job, briefing_schedule
from agent_reports.churn import assets as churn_assets
from agent_reports.churn import checks as churn_checks
from agent_reports.churn.partitions import churn_job, churn_schedule
from agent_reports.compliance import assets as compliance_assets
from agent_reports.compliance import checks as compliance_checks
from agent_reports.compliance.partitions import compliance_job, compliance_schedule
from agent_reports.core import settings
from agent_reports.core.customers import CANONICAL_COLUMNS
from agent_reports.core.resources import (
    AnalystResource,
    DataSourceResource,
    DeliveryResource,
    PartitionRangeIOManager,
    ReportStoreResource,
)
from agent_reports.core.run_lock import with_run_locks
from agent_reports.core.sources import MARKET_COLUMNS, ORIGIN_COLUMNS
from agent_reports.ingest import assets as ingest_assets
from agent_reports.ingest import checks as ingest_checks
from agent_reports.ingest.assets import ingest_job, ingest_schedule
from agent_reports.market import assets as market_assets
from agent_reports.market import checks as market_checks
from agent_reports.market.partitions import market_job, market_schedule
from agent_reports.ops import ClockResource
from agent_reports.ops.alerts import (
    approval_overdue_alert_sensor,
    freshness_alert_sensor,
    run_failure_alert_sensor,
)
from agent_reports.ops.approval import approve_report_job
from agent_reports.ops.catchup import CatchUp, build_catchup_sensors, build_late_lines_sensor
from agent_reports.ops.freshness import with_freshness
from agent_reports.ops.pings import run_ping_sensor

# Analyses whose missed windows the catch-up sensor launches (one line per analysis:
# its job, its report asset, its schedule, and when that schedule requests a window
# relative to the window's end; test_ops_catchup checks each against the schedule).
CATCHUPS = [
    CatchUp("market", market_job, market_assets.market_report, market_schedule, timedelta(hours=6)),
    CatchUp(
        "anomalies",
        anomalies_job,
        anomalies_assets.anomalies_report,
        anomalies_schedule,
        timedelta(minutes=5),
    ),
    CatchUp("churn", churn_job, churn_assets.churn_report, churn_schedule, timedelta(hours=7)),
    CatchUp(
        "compliance",
        compliance_job,
        compliance_assets.compliance_report,
        compliance_schedule,
        timedelta(0),
    ),
    CatchUp(
        "briefing",
        briefing_job,
        briefing_assets.briefing_report,
        briefing_schedule,
        timedelta(hours=-15),
    ),
]

# The catalog, applied once to every asset: who owns it, how often it runs, what it is.
OWNERS = {
    "market": "team:market-analytics",
    "anomalies": "team:platform",
    "churn": "team:customer-success",
    "compliance": "team:compliance",
    "briefing": "team:agent-reports",
    "ingest": "team:platform",
}
CADENCES = {
    "market": "daily",
    "anomalies": "hourly",
    "churn": "weekly",
    "compliance": "monthly",
    "briefing": "weekdays",
    "ingest": "hourly",
}
# Kinds for assets that declare none, by the last word of their name.
KINDS_BY_ROLE = {
    "report": {"openai", "html"},
    "email": {"email"},
    "alert": {"email", "webhook"},
    "analysis": {"pandas"},
    "detection": {"pandas"},
    "history": {"dagster"},
}
MARKET_TYPES = {"date": "datetime64", "ticker": "string", "file": "string", "line": "int64"}
CUSTOMER_TYPES = {
    "signup_date": "datetime64",
    "churn_date": "datetime64",
    "tenure": "float64",
    "monthly_charges": "float64",
    "total_charges": "float64",
    "churned": "bool",
}
COLUMN_SCHEMAS = {
    "market_prices": TableSchema(
        columns=[
            TableColumn(name, MARKET_TYPES.get(name, "float64"))
            for name in (*MARKET_COLUMNS, *ORIGIN_COLUMNS)
        ]
    ),
    "churn_customers": TableSchema(
        columns=[
            TableColumn(name, CUSTOMER_TYPES.get(name, "string")) for name in CANONICAL_COLUMNS
        ]
    ),
}


def catalog_spec(spec: AssetSpec) -> AssetSpec:
    """Owners, tags (analysis, cadence), kinds and, for tables, the column schema."""
    analysis = spec.group_name or ""
    kinds = spec.kinds or KINDS_BY_ROLE.get(spec.key.path[-1].rpartition("_")[2], {"python"})
    schema = COLUMN_SCHEMAS.get(spec.key.to_user_string())
    return spec.replace_attributes(kinds=kinds).merge_attributes(
        owners=[OWNERS[analysis]] if analysis in OWNERS else [],
        tags={"analysis": analysis, "cadence": CADENCES.get(analysis, "none")},
        metadata={"dagster/column_schema": schema} if schema else {},
    )


def with_code_references(assets: list) -> list:
    """Each asset linked to its source: the local file, or the file in the repository when
    AGENT_REPORTS_GIT_URL (and AGENT_REPORTS_GIT_BRANCH, default main) name it. Read when
    the code location loads: they describe the code, they are not run settings or secrets."""
    assets = with_source_code_references(assets)
    git_url = settings.env("AGENT_REPORTS_GIT_URL")
    if not git_url:
        return assets
    return link_code_references_to_git(
        assets,
        git_url=git_url,
        git_branch=settings.env("AGENT_REPORTS_GIT_BRANCH", "main") or "main",
        file_path_mapping=AnchorBasedFilePathMapping(
            local_file_anchor=Path(__file__).parent,
            file_anchor_path_in_repository="agent_reports",
        ),
    )


defs = Definitions(
    assets=with_code_references(
        load_assets_from_modules(
            [
                market_assets,
                anomalies_assets,
                churn_assets,
                compliance_assets,
                briefing_assets,
                ingest_assets,
            ]
        )
    ),
    asset_checks=load_asset_checks_from_modules(
        [
            market_checks,
            anomalies_checks,
            churn_checks,
            compliance_checks,
            briefing_checks,
            ingest_checks,
        ]
    ),
    jobs=[
        market_job,
        anomalies_job,
        churn_job,
        compliance_job,
        briefing_job,
        ingest_job,
        approve_report_job,
    ],
    schedules=[
        market_schedule,
        anomalies_schedule,
        churn_schedule,
        compliance_schedule,
        briefing_schedule,
        ingest_schedule,
    ],
    sensors=[
        *build_catchup_sensors(CATCHUPS),
        # Windows whose access logs grew after their report (core/log_store.py).
        build_late_lines_sensor([c for c in CATCHUPS if c.analysis in ("anomalies", "compliance")]),
        freshness_alert_sensor,
        run_failure_alert_sensor,
        approval_overdue_alert_sensor,
        run_ping_sensor,
    ],
    # One process per run, not one per step: the multiprocess default starts 5-7 processes
    # per run, each importing the code location again (4-9 s apiece on this machine), which
    # made orchestration, not the data, the cost of a run. A crashed run is retried whole
    # (dagster.yaml run_retries); the steps of an analysis are sequential anyway.
    executor=in_process_executor,
    resources={
        "source": DataSourceResource(),
        "analyst": AnalystResource(),
        "reports": ReportStoreResource(),
        "range_io_manager": PartitionRangeIOManager(),
        "delivery": DeliveryResource(),
        "clock": ClockResource(),
    },
)
# Freshness policies on the report assets (agent_reports/ops/freshness.py) and the catalog,
# each applied once.
defs = with_freshness(defs).map_resolved_asset_specs(func=catalog_spec)
# Each run holds its analysis' run lock from before its first step to after its last, on
# every launch path (agent_reports/core/run_lock.py): the second guard behind the pools.
defs = with_run_locks(defs)
