"""The asset check every CSV-fed asset carries: its rows were mostly read, not rejected."""

import json

import pandas as pd
from dagster import AssetCheckResult, AssetCheckSeverity

from agent_reports.core.csv_files import rejected_problem


def rows_mostly_read(frames: dict[str, pd.DataFrame]) -> AssetCheckResult:
    """Fails (ERROR) when more than a tenth of the rows read were rejected: the figures
    would rest on a fraction of the input. The coverage rides on each frame's attrs."""
    coverage = next(iter(frames.values())).attrs.get("coverage", {}) if frames else {}
    problem = rejected_problem(coverage)
    return AssetCheckResult(
        passed=problem is None,
        severity=AssetCheckSeverity.ERROR,
        description=problem,
        metadata={
            "rows_read": coverage.get("rows_read", 0),
            "rows_rejected": coverage.get("rows_rejected", 0),
            "examples": json.dumps(coverage.get("rejected_examples", [])),
        },
    )
