"""Read-only tools the briefing analyst may call before it writes the morning briefing.

Built from the source reports the briefing reads (the newest ones delivered by its
09:00 New York cut-off, as `briefing_inputs` chooses them), so a re-run sees what the
09:00 run could see; see core/investigation.py.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from agent_reports.briefing.analysis import ANOMALY_HOURS, latest_report, recent_reports
from agent_reports.core.investigation import Toolbox, ToolError, toolbox


def tools(root: Path, as_of: datetime) -> Toolbox:
    """The briefing tools over the reports delivered by `as_of`."""
    sources: dict[str, list[dict[str, Any]]] = {
        name: [r] if (r := latest_report(root, name, as_of)) else [] for name in ("market", "churn")
    }
    sources["anomalies"] = recent_reports(root, "anomalies", as_of, timedelta(hours=ANOMALY_HOURS))
    findings = {
        name: [
            {"partition": r["partition"], "summary": r["summary"], "findings": r["findings"]}
            for r in records
        ]
        for name, records in sources.items()
    }
    return toolbox([input_findings(findings)], findings)


def input_findings(findings: dict[str, list[dict[str, Any]]]) -> Callable[..., Any]:
    def input_findings(
        source: Literal["market", "anomalies", "churn"], partition: str | None = None
    ) -> dict[str, Any]:
        """A source report's own summary and findings (title, detail, subjects); for the
        anomalies, every hour read, or one `partition` (e.g. 2024-03-05-14:00)."""
        reports = [r for r in findings[source] if partition in (None, r["partition"])]
        if not reports:
            raise ToolError(f"no {source} report {partition or ''} among the briefing's inputs")
        return {"source": source, "reports": reports[:6]}

    return input_findings
