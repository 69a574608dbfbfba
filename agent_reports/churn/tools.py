"""Read-only tools the churn analyst may call before it writes the week's report.

Built from the week's metrics the report's partition already computed (churn and risk per
segment of every segmented column, the top at-risk customers and their features), with
labels and ids made safe as in the prompt; see core/investigation.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent_reports.churn.prompts import safe_id, safe_label
from agent_reports.core.investigation import Toolbox, ToolError, toolbox


def tools(metrics: dict[str, Any]) -> Toolbox:
    """The churn tools over one week's `metrics`."""
    segments = {
        column: [{**row, "segment": safe_label(row["segment"])} for row in rows]
        for column, rows in metrics["segments"].items()
    }
    customers = {
        safe_id(row["customer_id"]): {
            k: safe_label(v) if isinstance(v, str) else v
            for k, v in row.items()
            if k != "customer_id"
        }
        for row in metrics["top_at_risk"]
    }
    return toolbox(
        [churn_by_segment(segments), customer_features(customers)],
        {"segments": segments, "customers": customers},
    )


def churn_by_segment(segments: dict[str, list[dict[str, Any]]]) -> Callable[..., Any]:
    def churn_by_segment(column: str) -> dict[str, Any]:
        """Churn and risk for every segment of one column (contract, tenure band, payment
        method, ...), small segments included."""
        if column not in segments:
            raise ToolError(f"unknown column {column!r}; known: {', '.join(sorted(segments))}")
        return {"column": column, "segments": segments[column]}

    return churn_by_segment


def customer_features(customers: dict[str, dict[str, Any]]) -> Callable[..., Any]:
    def customer_features(customer_id: str) -> dict[str, Any]:
        """One at-risk customer's features and risk (the week's top at-risk list)."""
        if customer_id not in customers:
            raise ToolError(f"{customer_id!r} is not among the week's top at-risk customers")
        return {"customer_id": customer_id, **customers[customer_id]}

    return customer_features
