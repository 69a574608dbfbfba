"""Read-only tools the triage analyst may call before it writes the hour's note.

Built from what the report's partition already computed: the hour's features (top
clients, paths, user agents, status counts, the malformed-line samples) and each
feature's baseline values; see core/investigation.py. The verdict is not among the
inputs a tool can change: it was decided in code before any tool runs.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any, Literal

from agent_reports.core.investigation import Toolbox, ToolError, toolbox

BREAKDOWNS = {
    "client": "top_clients",
    "path": "top_paths",
    "agent": "top_user_agents",
    "path_5xx": "top_5xx_paths",
    "path_4xx": "top_4xx_paths",
    "slow_path": "slowest_paths",
}
MAX_SAMPLES = 5


def tools(features: dict[str, Any], baseline: dict[str, list[float]]) -> Toolbox:
    """The anomaly tools over one hour's `features` and its `baseline`."""
    return toolbox(
        [breakdown(features), compare_with_baseline(features, baseline), sample_lines(features)],
        {"features": features, "baseline": baseline},
    )


def breakdown(features: dict[str, Any]) -> Callable[..., Any]:
    def breakdown_hour(
        by: Literal["client", "path", "status", "agent", "path_5xx", "path_4xx", "slow_path"],
    ) -> dict[str, Any]:
        """The hour broken down by client, path, status code or user agent (the top
        entries), or the paths with most 5xx, most 4xx, or the slowest paths."""
        if by == "status":
            return {"by": by, "requests": features["requests"], "rows": features["status_counts"]}
        return {"by": by, "requests": features["requests"], "rows": features[BREAKDOWNS[by]]}

    return breakdown_hour


def compare_with_baseline(
    features: dict[str, Any], baseline: dict[str, list[float]]
) -> Callable[..., Any]:
    def compare_with_baseline(feature: str) -> dict[str, Any]:
        """One feature of the hour against its baseline: the observed value, the baseline
        hours' values, their median and median absolute deviation."""
        if feature not in baseline:
            raise ToolError(f"unknown feature {feature!r}; known: {', '.join(sorted(baseline))}")
        values = baseline[feature]
        median = statistics.median(values) if values else None
        mad = statistics.median(abs(v - median) for v in values) if values else None
        return {
            "feature": feature,
            "observed": features.get(feature),
            "baseline_values": values,
            "baseline_median": median,
            "baseline_mad": mad,
        }

    return compare_with_baseline


def sample_lines(features: dict[str, Any]) -> Callable[..., Any]:
    def sample_lines(contains: str = "") -> dict[str, Any]:
        """Up to 5 of the hour's sampled unparsed log lines whose text contains `contains`
        (any case; empty: all samples), with their file and line number."""
        wanted = contains.lower()
        samples = [s for s in features["malformed_samples"] if wanted in str(s["text"]).lower()]
        return {
            "contains": contains,
            "malformed_lines": features["malformed_lines"],
            "samples": samples[:MAX_SAMPLES],
        }

    return sample_lines
