"""What every input-reading asset shares: the failure a bad input file gives, and the check
every CSV-fed asset carries (its rows were mostly read, not rejected)."""

import json

import pandas as pd
from dagster import AssetCheckResult, AssetCheckSeverity, Failure

from agent_reports.core.csv_files import rejected_problem
from agent_reports.core.sources import InputError


def input_failure(what: str, error: InputError) -> Failure:
    """A bad input file fails the run naming its file, line and column, without a retry:
    the same file would fail again."""
    return Failure(
        description=f"Bad {what} input: {error}",
        metadata={"file": error.path, "line": error.line or 0, "column": error.column or ""},
        allow_retries=False,
    )


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
