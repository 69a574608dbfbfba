"""Churn asset checks: the base can train a model (warning), the model separates churners
from stayers (warning), and the report is grounded (warning: a degraded week is visible)."""

import json

import pandas as pd
from dagster import AssetCheckResult, AssetCheckSeverity, asset_check

from agent_reports.churn.analysis import MIN_PER_CLASS
from agent_reports.churn.assets import churn_analysis, churn_customers, churn_report
from agent_reports.churn.partitions import churn_partitions
from agent_reports.core.input_checks import rows_mostly_read
from agent_reports.core.publishing import low_quality
from agent_reports.core.reports import Report

MIN_ROC_AUC = 0.7


@asset_check(asset=churn_customers, partitions_def=churn_partitions)
def both_outcomes_present(churn_customers: dict[str, pd.DataFrame]) -> AssetCheckResult:
    """At least MIN_PER_CLASS churned and active customers each week, or no model."""
    short = {}
    for key, frame in churn_customers.items():
        churned = int(frame["churned"].sum())
        if min(churned, len(frame) - churned) < MIN_PER_CLASS:
            short[key] = {"churned": churned, "active": len(frame) - churned}
    return AssetCheckResult(
        passed=not short,
        severity=AssetCheckSeverity.WARN,
        metadata={"short_weeks": json.dumps(short), "minimum_per_outcome": MIN_PER_CLASS},
    )


@asset_check(asset=churn_customers, partitions_def=churn_partitions)
def input_rows_mostly_read(churn_customers: dict[str, pd.DataFrame]) -> AssetCheckResult:
    """At most a tenth of the rows read were rejected (core/input_checks.py)."""
    return rows_mostly_read(churn_customers)


@asset_check(asset=churn_analysis, partitions_def=churn_partitions)
def model_auc_acceptable(churn_analysis: dict[str, dict]) -> AssetCheckResult:
    """The cross-validated ROC AUC reaches MIN_ROC_AUC: below it, risks are close to guesses."""
    aucs = {key: metrics["model"]["roc_auc"] for key, metrics in churn_analysis.items()}
    weak = {key: auc for key, auc in aucs.items() if auc is None or auc < MIN_ROC_AUC}
    return AssetCheckResult(
        passed=not weak,
        severity=AssetCheckSeverity.WARN,
        metadata={"roc_auc": json.dumps(aucs), "minimum": MIN_ROC_AUC},
    )


@asset_check(asset=churn_report, partitions_def=churn_partitions)
def report_is_grounded(churn_report: dict[str, Report]) -> AssetCheckResult:
    """Each week's report has a summary, was not degraded, and names at-risk customers."""
    problems = []
    for key, report in churn_report.items():
        if not report.summary.strip():
            problems.append(f"{key}: empty summary")
        if report.degraded:
            problems.append(f"{key}: degraded ({'; '.join(report.notes)[:200]})")
        if low := low_quality(report.llm):
            problems.append(f"{key}: {low}")
    return AssetCheckResult(
        passed=not problems,
        severity=AssetCheckSeverity.WARN,
        metadata={"problems": json.dumps(problems[:20])},
    )


churn_checks = [
    both_outcomes_present,
    input_rows_mostly_read,
    model_auc_acceptable,
    report_is_grounded,
]
